"""`siren serve` under hostile clients (issue 40, items 2, 3 and 6): idle and partial-header
sockets, slow bodies, websockets that never start, lone surrogates on every text path, refusals
logged once per interval, a key no client can send. Real uvicorn servers on 127.0.0.1 only,
each test bounded in connections and time."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from siren.cli import main  # noqa: E402
from siren.errors import SirenError  # noqa: E402
from siren.runtime import serve_net  # noqa: E402
from siren.runtime.guard import SirenGuard  # noqa: E402
from siren.runtime.serve import ServeConfig, create_app, serve_limits  # noqa: E402
from test_guard import make_guard  # noqa: E402
from test_serve import free_port  # noqa: E402

LIMITS = serve_limits(max_batch_size=8, max_wait_ms=1, max_items=8, max_chars=2000, max_body_bytes=64 * 1024,
                     max_queue=64, max_stream_chunks=50, batch_tokens=4096, header_timeout_s=2.0,
                     body_timeout_s=1.0, idle_timeout_s=1, max_connections=200, ws_handshake_timeout_s=0.5,
                     max_header_bytes=4096, refusal_log_interval_s=60)


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path_factory.mktemp("hostile") / "guard", tiny_llama_dir)
    return folder


@pytest.fixture(scope="module")
def guard(guard_dir):
    return SirenGuard.from_pretrained(str(guard_dir), device="cpu")


class Counter(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


class Server:
    """uvicorn with `serve_net`'s protocol and options, in a thread, on 127.0.0.1."""

    def __init__(self, app, limits: ServeConfig):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        options = serve_net.uvicorn_options(limits, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True if the server closed `sock` (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_idle_and_partial_header_sockets_do_not_starve_a_good_request(guard):
    """300 sockets (half silent, half stuck in their headers) against a cap of 200: a good
    request is still answered within a second, the stuck sockets are closed after
    header_timeout_s, and the log holds a few lines, not one per socket."""
    counter = Counter()
    logging.getLogger("siren.serve").addHandler(counter)
    held: list[socket.socket] = []
    try:
        with Server(create_app(guard, model_name="g", limits=LIMITS), LIMITS) as srv:
            for i in range(300):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                if i % 2:
                    s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appli")
                held.append(s)
            time.sleep(0.3)
            start = time.monotonic()
            r = httpx.post(f"{srv.url}/v1/score", json={"text": "hello there"}, timeout=5)
            took = time.monotonic() - start
            assert r.status_code == 200, r.text
            assert took < 1.0, f"a good request took {took:.2f} s behind 300 idle sockets"
            # The newest 100 survived the cap; after header_timeout_s they are closed too.
            survivors = held[-100:]
            assert all(closed_by_peer(s, LIMITS.header_timeout_s + 3) for s in survivors[::10])
            assert all(closed_by_peer(s, 0.5) for s in held[:100:10]), "the oldest were evicted at the cap"
            r = httpx.get(f"{srv.url}/healthz", timeout=5)
            assert r.status_code == 200
    finally:
        for s in held:
            s.close()
        logging.getLogger("siren.serve").removeHandler(counter)
    messages = [r.getMessage() for r in counter.records]
    assert any("max_connections reached" in m for m in messages)
    assert any("did not arrive in time" in m for m in messages)
    assert len(messages) <= 4, messages   # once per interval and kind, not ~200 lines


def test_a_slow_body_is_cut_off_and_logs_no_traceback(guard, caplog):
    with Server(create_app(guard, model_name="g", limits=LIMITS), LIMITS) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"text\": ")
        assert closed_by_peer(s, LIMITS.body_timeout_s + 3)
        s.close()
        time.sleep(0.2)
        assert httpx.post(f"{srv.url}/v1/score", json={"text": "ok"}, timeout=5).status_code == 200
    assert not [r for r in caplog.records if r.exc_info], "a cut-off body logged a traceback"


def test_a_kept_alive_connection_is_closed_when_idle(guard):
    with Server(create_app(guard, model_name="g", limits=LIMITS), LIMITS) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in s.recv(4096)
        assert closed_by_peer(s, LIMITS.idle_timeout_s + 3)
        s.close()


def test_an_oversized_header_is_refused(guard):
    with Server(create_app(guard, model_name="g", limits=LIMITS), LIMITS) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        # Headers that never end: h11 holds at most max_header_bytes of an unfinished request.
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: aaaaaaaa\r\n" * (LIMITS.max_header_bytes // 10))
        assert s.recv(4096).startswith(b"HTTP/1.1 400")
        assert closed_by_peer(s, 3)
        s.close()


def test_refusals_are_logged_once_per_interval():
    flt = serve_net.OncePerInterval(0.3)
    make = lambda: logging.LogRecord("siren.serve", logging.WARNING, __file__, 1, "refused %d", (1,), None)  # noqa: E731
    assert flt.filter(make())
    assert sum(flt.filter(make()) for _ in range(1000)) == 0
    time.sleep(0.35)
    record = make()
    assert flt.filter(record) and "1000 more like this" in record.getMessage()
    # asyncio's accept error keeps its one line and loses the repeated traceback.
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        import sys

        err = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource",
                                None, sys.exc_info())
    assert flt.filter(err) and err.exc_info is None and "Too many open files" in err.getMessage()


def test_the_connection_cap_stays_below_the_open_file_limit(monkeypatch, caplog):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (300, 300))
    monkeypatch.setattr(resource, "setrlimit", lambda *a: None)
    assert serve_net.fd_headroom(1000) == 172
    assert "max_connections 1000 lowered to 172" in caplog.text
    assert serve_net.fd_headroom(100) == 100


def test_serve_limits_come_from_the_yaml_and_are_checked():
    from siren.config import defaults

    yaml_serve = defaults()["serve"]
    limits = serve_limits()
    for name in ("header_timeout_s", "max_connections", "ws_handshake_timeout_s", "refusal_log_interval_s"):
        assert getattr(limits, name) == yaml_serve[name]
    for bad in ({"header_timeout_s": 0}, {"body_timeout_s": float("nan")}, {"max_connections": 0},
                {"ws_handshake_timeout_s": "10"}):
        with pytest.raises(SirenError, match=f"siren serve: {next(iter(bad))} must be"):
            serve_limits(**bad)


# ---------------------------------------------------------------- the websocket

@pytest.fixture
def client(guard):
    with TestClient(create_app(guard, model_name="g", limits=LIMITS)) as c:
        yield c


def test_websocket_that_never_starts_is_closed_with_a_message(client):
    with client.websocket_connect("/v1/stream") as ws:
        err = ws.receive_json()["error"]
        assert err["code"] == "handshake_timeout" and "no start message within 0.5 s" in err["message"]
        assert ws.receive()["code"] == 1008


def test_websocket_without_the_key_in_time_is_closed(guard):
    app = create_app(guard, model_name="g", limits=LIMITS, api_key="sekret")
    with TestClient(app) as c, c.websocket_connect("/v1/stream") as ws:
        assert "no start message" in ws.receive_json()["error"]["message"]


def test_websocket_lone_surrogate_gets_an_error_and_the_socket_goes_on(client, guard):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"prompt": "p"})
        assert ws.receive_json()["ready"] is True
        ws.send_text('{"chunk": "a\\ud800"}')     # a JS client that split an emoji
        err = ws.receive_json()["error"]
        assert err["code"] == "invalid_text" and "chunk 0 holds a lone surrogate" in err["message"]
        ws.send_json({"chunk": "hello"})
        got = ws.receive_json()
        assert got["index"] == 0
        assert got["score"] == pytest.approx(guard.score(prompt="p", response="hello").score, abs=1e-5)
        ws.send_json({"end": True})
        assert ws.receive_json()["chunks"] == 1


def test_websocket_prompt_with_a_lone_surrogate_is_refused(client):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text('{"prompt": "\\udc80x"}')
        assert "prompt holds a lone surrogate" in ws.receive_json()["error"]["message"]
        assert ws.receive()["code"] == 1007


@pytest.mark.parametrize("path,body,message", [
    ("/v1/tokenize", '{"text": "a\\ud800b"}', "text holds a lone surrogate"),
    ("/v1/score", '{"text": "a\\ud800b"}', "the body holds a lone surrogate"),
    ("/v1/score", '{"prompt": "\\ud800", "response": "x"}', "the body holds a lone surrogate"),
    ("/v1/moderations", '{"input": ["ok", "\\udfff"]}', "input[1] holds a lone surrogate"),
    ("/v1/score", '{"text": null}', "field 'text' must be a string, got a JSON null"),
    ("/v1/score", '{"prompt": "p", "response": null}', "field 'response' must be a string, got a JSON null"),
])
def test_text_endpoints_answer_400(client, path, body, message):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    assert client.post("/v1/score", json={"prompt": None, "response": "fine"}).status_code == 200


# ---------------------------------------------------------------- start-up

@pytest.mark.parametrize("key,shown", [("schlüssel", "'ü'"), ("key\t", "'\\t'"), (" key", "' '")])
def test_a_key_no_client_can_send_is_refused_at_start(guard_dir, monkeypatch, capsys, key, shown):
    def refuse(*a, **k):
        raise AssertionError("the backbone was loaded before the key was checked")

    monkeypatch.setenv("SIREN_API_KEY", key)
    monkeypatch.setattr("siren.runtime.guard.SirenGuard.from_pretrained", refuse)
    assert main(["serve", "--model", str(guard_dir)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"SIREN_API_KEY holds {shown}" in err and "printable ASCII" in err


def test_serve_passes_the_limits_to_uvicorn(guard_dir, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))
    monkeypatch.delenv("SIREN_API_KEY", raising=False)
    assert main(["serve", "--model", str(guard_dir), "--header_timeout_s", "3.5", "--idle_timeout_s", "2"]) == 0
    [kw] = served
    assert kw["http"].header_timeout == 3.5 and kw["timeout_keep_alive"] == 2
    assert kw["h11_max_incomplete_event_size"] == dataclasses.asdict(serve_limits())["max_header_bytes"]
