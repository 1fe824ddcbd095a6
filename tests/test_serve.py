"""`siren serve` on a tiny random guard: endpoint shapes and values, bad input, batching, API key,
the streaming socket, the OpenAI client, and a real uvicorn server."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from siren.cli import main  # noqa: E402
from siren.errors import SirenError  # noqa: E402
from siren.features import join_prompt_response  # noqa: E402
from siren.runtime.guard import ScoreResult, SirenGuard  # noqa: E402
from siren.runtime.serve import (DynamicBatcher, serve_limits, StatelessSession, create_app,  # noqa: E402
                                 open_session, token_pieces)
from test_guard import TEXTS, make_guard  # noqa: E402

LIMITS = serve_limits(max_batch_size=32, max_wait_ms=2, max_items=8, max_chars=2000, max_body_bytes=64 * 1024,
                     max_queue=64, max_stream_chunks=50, batch_tokens=4096)


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path_factory.mktemp("serve") / "guard", tiny_llama_dir)
    return folder


@pytest.fixture(scope="module")
def guard(guard_dir):
    return SirenGuard.from_pretrained(str(guard_dir), device="cpu")


@pytest.fixture
def client(guard):
    with TestClient(create_app(guard, model_name="tiny-guard", limits=LIMITS)) as c:
        yield c


def direct(guard, texts, threshold=None):
    return [guard.score(t, threshold=threshold) for t in texts]


# ---------------------------------------------------------------- shapes and values

def test_moderations_shape_and_scores(client, guard):
    texts = TEXTS[:6]
    r = client.post("/v1/moderations", json={"input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-guard" and body["id"].startswith("modr-")
    want = direct(guard, texts)
    assert len(body["results"]) == len(texts)
    for got, w in zip(body["results"], want):
        assert got["category_scores"]["harmful"] == pytest.approx(w.score, abs=1e-5)
        assert got["flagged"] is got["categories"]["harmful"] is w.is_harmful
    assert len({w.is_harmful for w in want}) == 2  # both decisions occur: the flags are really checked
    one = client.post("/v1/moderations", json={"input": texts[0], "model": "omni-moderation-latest"}).json()
    assert one["results"][0]["category_scores"]["harmful"] == pytest.approx(want[0].score, abs=1e-5)
    parts = client.post("/v1/moderations", json={"input": [{"type": "text", "text": texts[1]}]}).json()
    assert parts["results"][0]["category_scores"]["harmful"] == pytest.approx(want[1].score, abs=1e-5)


def test_score_endpoint(client, guard):
    r = client.post("/v1/score", json={"text": TEXTS[0]})
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    assert res == pytest.approx(guard.score(TEXTS[0]).to_dict(), abs=1e-5)

    pair = client.post("/v1/score", json={"prompt": "how do I", "response": "hurt someone"}).json()["results"][0]
    assert pair["score"] == pytest.approx(guard.score(prompt="how do I", response="hurt someone").score, abs=1e-5)

    items = [{"text": TEXTS[3]}, {"prompt": TEXTS[1], "response": TEXTS[2]}, {"response": TEXTS[4]}]
    scores = [r["score"] for r in client.post("/v1/score", json={"items": items}).json()["results"]]
    want = [guard.score(TEXTS[3]).score, guard.score(prompt=TEXTS[1], response=TEXTS[2]).score,
            guard.score(TEXTS[4]).score]
    np.testing.assert_allclose(scores, want, atol=1e-5)

    # A per-request threshold decides, and is echoed back.
    s = guard.score(TEXTS[0]).score
    for thr, flagged in ((max(0.0, s - 0.01), True), (min(1.0, s + 0.01), False)):
        res = client.post("/v1/score", json={"text": TEXTS[0], "threshold": thr}).json()["results"][0]
        assert res["is_harmful"] is flagged and res["threshold"] == pytest.approx(thr)


def test_models_healthz_tokenize_page(client, guard):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny-guard"]
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["threshold"] == guard.default_threshold
    assert health["max_length"] == guard.max_length
    text = "hello world, how are you doing today?"
    pieces = client.post("/v1/tokenize", json={"text": text}).json()["pieces"]
    assert "".join(pieces) == text
    assert len(pieces) == len(guard.backbone.tokenizer(text, add_special_tokens=False)["input_ids"])
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="score-line"' in page.text and "/v1/stream" in page.text


def test_token_pieces_rejoin(guard):
    tok = guard.backbone.tokenizer
    for text in ["", "a", "  leading and trailing  ", "multi\n\nline  text with   spaces", TEXTS[5]]:
        assert "".join(token_pieces(tok, text)) == text


# ---------------------------------------------------------------- bad input

BIG = "x" * 1_000_000
BAD = [
    ("empty input list", "/v1/moderations", {"json": {"input": []}}, 400, "empty list"),
    ("non-string input", "/v1/moderations", {"json": {"input": ["ok", 3]}}, 400, "input[1] must be a string"),
    ("input not str/list", "/v1/moderations", {"json": {"input": {"a": 1}}}, 400, "'input' must be a string"),
    ("missing input", "/v1/moderations", {"json": {"text": "x"}}, 400, "missing field 'input'"),
    ("1 MB text", "/v1/moderations", {"json": {"input": BIG}}, 413, "the body"),
    ("text over max_chars", "/v1/moderations", {"json": {"input": ["ok", "y" * 2001]}}, 413,
     "input[1] has 2,001 characters; the limit is 2,000"),
    ("too many items", "/v1/moderations", {"json": {"input": ["a"] * 9}}, 413, "has 9 items; the limit is 8"),
    ("malformed JSON", "/v1/moderations", {"content": b'{"input": ["a",', "headers": {"content-type": "application/json"}},
     400, "not valid JSON"),
    ("not UTF-8", "/v1/score", {"content": b'{"text": "\xff"}', "headers": {"content-type": "application/json"}},
     400, "not valid JSON"),
    ("wrong content type", "/v1/moderations", {"content": b"input=hello", "headers": {"content-type": "text/plain"}},
     415, "Content-Type: application/json"),
    ("no content type", "/v1/score", {"content": b'{"text": "a"}'}, 415, "no content type"),
    ("body not an object", "/v1/score", {"json": ["a"]}, 400, "must be a JSON object"),
    ("text and pair", "/v1/score", {"json": {"text": "a", "prompt": "b"}}, 400, "not both"),
    ("no text field", "/v1/score", {"json": {"txt": "a"}}, 400, "no \"text\""),
    ("non-string response", "/v1/score", {"json": {"items": [{"text": "a"}, {"response": 5}]}}, 400,
     "items[1]: field 'response' must be a string"),
    ("threshold out of range", "/v1/score", {"json": {"text": "a", "threshold": 1.5}}, 400, "between 0 and 1"),
    ("threshold not a number", "/v1/score", {"json": {"text": "a", "threshold": "0.5"}}, 400, "between 0 and 1"),
    ("empty items", "/v1/score", {"json": {"items": []}}, 400, "empty list"),
    ("unknown model", "/v1/moderations", {"json": {"input": "a", "model": "gpt-4o"}}, 404, "not served here"),
    ("unknown route", "/v1/chat/completions", {"json": {}}, 404, "no route POST /v1/chat/completions"),
]


@pytest.mark.parametrize("name,path,kwargs,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gives_4xx_and_server_stays_up(client, guard, name, path, kwargs, status, message):
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"]
    ok = client.post("/v1/moderations", json={"input": TEXTS[0]})
    assert ok.status_code == 200
    assert ok.json()["results"][0]["category_scores"]["harmful"] == pytest.approx(guard.score(TEXTS[0]).score, abs=1e-5)


def test_wrong_method(client):
    r = client.get("/v1/moderations")
    assert r.status_code == 405 and "GET is not allowed" in r.json()["error"]["message"]


def test_queue_full_gives_503(guard):
    limits = serve_limits(max_queue=1, max_wait_ms=0)
    app = create_app(guard, model_name="g", limits=limits)
    batcher = app.state.batcher
    gate = threading.Event()
    with TestClient(app) as c:
        blocker = batcher.submit_call(gate.wait)  # holds the worker
        time.sleep(0.05)
        filler = batcher.submit_call(lambda: None)  # fills the one queue slot
        r = c.post("/v1/score", json={"text": "a"})
        gate.set()
        blocker.result(5), filler.result(5)
        assert r.status_code == 503 and "retry" in r.json()["error"]["message"]
        assert c.post("/v1/score", json={"text": "a"}).status_code == 200


def test_limits_are_checked():
    with pytest.raises(SirenError, match="max_items"):
        serve_limits(max_items=0)
    with pytest.raises(SirenError, match="max_wait_ms"):
        serve_limits(max_wait_ms=-1)
    assert serve_limits(max_items=3).max_items == 3


# ---------------------------------------------------------------- API key

def test_api_key(guard):
    with TestClient(create_app(guard, model_name="g", limits=LIMITS, api_key="s3cret")) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.post("/v1/moderations", json={"input": "a"}, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models").status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/moderations", json={"input": "a"}, headers=good).status_code == 200
        assert c.get("/v1/models", headers=good).status_code == 200
        assert c.get("/healthz").json()["api_key_required"] is True
        assert c.get("/").status_code == 200
        with c.websocket_connect("/v1/stream") as ws:
            ws.send_json({"prompt": "p", "api_key": "nope"})
            assert "API key" in ws.receive_json()["error"]["message"]
        with c.websocket_connect("/v1/stream") as ws:
            ws.send_json({"prompt": "p", "api_key": "s3cret"})
            assert ws.receive_json()["ready"] is True


# ---------------------------------------------------------------- dynamic batching

class CountingGuard:
    """Delegates to a guard and records the size of every score_batch call."""

    def __init__(self, guard):
        self._guard, self.calls = guard, []

    def score_batch(self, texts, **kw):
        self.calls.append(len(texts))
        return self._guard.score_batch(texts, **kw)

    def __getattr__(self, name):
        return getattr(self._guard, name)


def test_batcher_groups_queued_requests_and_never_splits_one(guard):
    counting = CountingGuard(guard)
    batcher = DynamicBatcher(counting, serve_limits(max_batch_size=4, max_wait_ms=50), default_threshold=0.5)
    sizes = [1, 2, 1, 3, 1, 1, 4]
    texts = [TEXTS[i % len(TEXTS)] for i in range(sum(sizes))]
    futures, start = [], 0
    for n in sizes:  # all queued before the worker starts: the grouping is deterministic
        futures.append(batcher.submit_score(texts[start:start + n], threshold=None if n != 3 else 0.0))
        start += n
    batcher.start()
    got = [f.result(30) for f in futures]
    batcher.close()
    # Greedy in arrival order, at most 4 texts, a request never split: [1+2+1], [3+1], [1], [4]
    # ([1] alone because the 4-text request after it does not fit).
    assert counting.calls == [4, 4, 1, 4]
    flat = [r for rs in got for r in rs]
    np.testing.assert_allclose([r.score for r in flat], [guard.score(t).score for t in texts], atol=1e-5)
    assert all(r.is_harmful and r.threshold == 0.0 for r in got[3])  # its own threshold
    assert all(r.threshold == 0.5 and r.is_harmful == (r.score >= 0.5) for r in got[0])


def test_batcher_keeps_calls_in_order(guard):
    counting = CountingGuard(guard)
    batcher = DynamicBatcher(counting, serve_limits(max_batch_size=8, max_wait_ms=50), default_threshold=0.5)
    order = []
    f1 = batcher.submit_score(["a"])
    f2 = batcher.submit_call(lambda: order.append(("call", len(counting.calls))))
    f3 = batcher.submit_score(["b"])
    batcher.start()
    for f in (f1, f2, f3):
        f.result(30)
    batcher.close()
    assert counting.calls == [1, 1] and order == [("call", 1)]  # the call ran between the two batches


def test_batcher_error_goes_to_the_request(guard):
    class Broken(CountingGuard):
        def score_batch(self, texts, **kw):
            raise SirenError("boom")

    batcher = DynamicBatcher(Broken(guard), serve_limits(), default_threshold=0.5).start()
    with pytest.raises(SirenError, match="boom"):
        batcher.submit_score(["a"]).result(30)
    assert batcher.submit_call(lambda: 7).result(30) == 7  # the worker is still alive
    batcher.close()


# ---------------------------------------------------------------- streaming

def test_stream_socket_matches_rescoring(client, guard):
    prompt, chunks = "how can I", ["hurt", " someone", " badly", " now", "", " please"]
    so_far, want = "", []
    for c in chunks:
        so_far += c
        want.append(guard.score(join_prompt_response(prompt, so_far)).score)
    thr = float(np.median(want))  # crosses somewhere inside the stream
    first = next(i for i, s in enumerate(want) if s >= thr)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"prompt": prompt, "threshold": thr})
        ready = ws.receive_json()
        assert ready["ready"] is True and ready["threshold"] == thr and ready["incremental"] is True  # the guard has StreamSession
        got = []
        for c in chunks:
            ws.send_json({"chunk": c})
            got.append(ws.receive_json())
        ws.send_json({"end": True})
        done = ws.receive_json()
    np.testing.assert_allclose([g["score"] for g in got], want, atol=1e-5)
    assert [g["index"] for g in got] == list(range(len(chunks)))
    assert [g["is_harmful"] for g in got] == [s >= thr for s in want]
    assert [g["flagged_chunk"] for g in got] == [None if i < first else first for i in range(len(chunks))]
    # The incremental session reports where the score first crossed (its FlagPoint): the end of
    # the flagged chunk's text, at the token offset the session read.
    flagged_at = done.pop("flagged_at")
    assert done == {"done": True, "chunks": len(chunks), "flagged_chunk": first}
    assert flagged_at["char"] == len("".join(chunks[:first + 1]))
    assert flagged_at["score"] == pytest.approx(want[first], abs=1e-5)


def test_stream_debounce_needs_consecutive_flags(guard):
    class Scripted:  # score_streaming returns a scripted sequence
        default_threshold = 0.5

        def __init__(self, scores):
            self.scores = iter(scores)

        def score_streaming(self, text, threshold=None):
            s = next(self.scores)
            return ScoreResult(s, s >= threshold, threshold)

    session = open_session(Scripted([0.9, 0.1, 0.9, 0.8, 0.2]), "p", debounce=2, threshold=0.5)
    assert isinstance(session, StatelessSession)
    flags = []
    for c in "abcde":
        session.feed(c)
        flags.append(session.flagged_at)
    assert flags == [None, None, None, {"chunk": 3, "char": 4}, {"chunk": 3, "char": 4}]


def test_open_session_prefers_the_incremental_session(guard):
    class Session:
        flagged_at = None

        def feed(self, chunk):
            return ScoreResult(1.0, True, 0.5)

    class WithSession:
        def stream(self, prompt=None, *, debounce=1, threshold=None):
            self.args = (prompt, debounce, threshold)
            return Session()

    g = WithSession()
    assert isinstance(open_session(g, "p", debounce=3, threshold=0.2), Session) and g.args == ("p", 3, 0.2)
    # SirenGuard has the incremental session; an object with only score_streaming gets the fallback.
    from siren.runtime.stream import StreamSession

    assert isinstance(open_session(guard, "p"), StreamSession)

    class StatelessOnly:
        default_threshold = 0.5

        def score_streaming(self, text, prompt=None, threshold=None):
            return ScoreResult(0.0, False, 0.5)

    assert isinstance(open_session(StatelessOnly(), "p"), StatelessSession)


@pytest.mark.parametrize("start,message,code", [
    ({"prompt": 3}, "'prompt' must be a string", 1007),
    ({"debounce": 0}, "'debounce' must be an integer >= 1", 1007),
    ({"threshold": -1}, "between 0 and 1", 1007),
])
def test_stream_bad_start(client, start, message, code):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json(start)
        assert message in ws.receive_json()["error"]["message"]
        assert ws.receive()["code"] == code


def test_stream_bad_chunks(client):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({})
        ws.receive_json()
        ws.send_json({"chunk": 5})
        assert "'chunk' as a JSON number" in ws.receive_json()["error"]["message"]
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({})
        ws.receive_json()
        ws.send_text("{not json")
        assert "not valid JSON" in ws.receive_json()["error"]["message"]
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"prompt": "p" * 1990})
        ws.receive_json()
        ws.send_json({"chunk": "x" * 5})
        assert "score" in ws.receive_json()
        ws.send_json({"chunk": "x" * 10})
        assert "reached 2,005 characters; the limit is 2,000" in ws.receive_json()["error"]["message"]
        assert ws.receive()["code"] == 1009


# ---------------------------------------------------------------- a real server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def test_concurrent_requests_are_batched(guard):
    counting = CountingGuard(guard)
    n = 12
    texts = [TEXTS[i % len(TEXTS)] for i in range(n)]
    want = [guard.score(t).score for t in texts]
    for limits, batched in ((serve_limits(max_batch_size=32, max_wait_ms=400), True),
                            (serve_limits(max_batch_size=1, max_wait_ms=0), False)):
        counting.calls.clear()
        with ServerThread(create_app(counting, model_name="g", limits=limits)) as srv, \
                httpx.Client(base_url=srv.url, timeout=60) as http:
            barrier = threading.Barrier(n)

            def one(t):
                barrier.wait()
                return http.post("/v1/moderations", json={"input": t}).json()["results"][0]["category_scores"]["harmful"]

            with ThreadPoolExecutor(n) as pool:
                got = list(pool.map(one, texts))
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert sum(counting.calls) == n
        if batched:  # 12 requests released together, collected for 400 ms: a few batches, not 12
            assert len(counting.calls) <= 3, counting.calls
        else:
            assert counting.calls == [1] * n


def test_openai_client_against_the_server(guard):
    openai = pytest.importorskip("openai")
    with ServerThread(create_app(guard, model_name="tiny-guard", limits=LIMITS, api_key="k")) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
        res = client.moderations.create(input=TEXTS[:3], model="omni-moderation-latest")
        assert res.model == "tiny-guard" and len(res.results) == 3
        want = direct(guard, TEXTS[:3])
        for r, w in zip(res.results, want):
            assert r.flagged is w.is_harmful
            assert r.category_scores.model_dump()["harmful"] == pytest.approx(w.score, abs=1e-5)
        bare = client.moderations.create(input=TEXTS[0])  # no model: the served guard
        assert bare.results[0].category_scores.model_dump()["harmful"] == pytest.approx(want[0].score, abs=1e-5)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).moderations.create(input="a")
        with pytest.raises(openai.BadRequestError, match="empty list"):
            client.moderations.create(input=[])


def test_websocket_over_uvicorn(guard):
    pytest.importorskip("websockets")
    from websockets.sync.client import connect

    with ServerThread(create_app(guard, model_name="g", limits=LIMITS)) as srv:
        with connect(f"ws://127.0.0.1:{srv.port}/v1/stream") as ws:
            ws.send(json.dumps({"prompt": "p"}))
            assert json.loads(ws.recv())["ready"] is True
            ws.send(json.dumps({"chunk": "hello"}))
            got = json.loads(ws.recv())
    assert got["score"] == pytest.approx(guard.score(prompt="p", response="hello").score, abs=1e-5)


# ---------------------------------------------------------------- command line

def test_cli_serve_errors(guard_dir, capsys):
    assert main(["serve", "--model", str(guard_dir), "--port", "0"]) == 2
    assert "--port must be an integer >= 1 and <= 65535, got 0" in capsys.readouterr().err
    assert main(["serve", "--model", str(guard_dir), "--max_items", "0"]) == 2
    assert "max_items must be an integer >= 1" in capsys.readouterr().err
    assert main(["serve", "--model", str(guard_dir), "--decision_threshold", "2"]) == 2
    assert "--decision_threshold must be a number >= 0 and <= 1 or null, got 2.0" in capsys.readouterr().err


def test_cli_serve_compile_flag_reaches_the_guard(guard_dir, monkeypatch, capsys):
    import uvicorn

    from siren.runtime.guard import SirenGuard

    loads, served = [], []
    original = SirenGuard.from_pretrained.__func__

    def recording_load(cls, folder, **kwargs):
        loads.append(kwargs)
        return original(cls, folder, **{**kwargs, "compile": False})  # the compile itself: tests/test_compile.py

    monkeypatch.setattr(SirenGuard, "from_pretrained", classmethod(recording_load))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))
    assert main(["serve", "--model", str(guard_dir), "--compile", "--port", "8123"]) == 0
    assert main(["serve", "--model", str(guard_dir), "--port", "8124"]) == 0
    assert [kw["compile"] for kw in loads] == [True, False]
    assert [kw["port"] for kw in served] == [8123, 8124]
    assert capsys.readouterr().out.count("compiling the single-text forward") == 1


def test_one_megabyte_text_with_default_limits(guard):
    with TestClient(create_app(guard, model_name="g", limits=serve_limits())) as c:
        r = c.post("/v1/moderations", json={"input": BIG})  # under the 1 MiB body limit, over max_chars
        assert r.status_code == 413
        assert "input has 1,000,000 characters; the limit is 32,768" in r.json()["error"]["message"]
        assert c.post("/v1/moderations", json={"input": "fine"}).status_code == 200


def test_stream_socket_uses_the_incremental_session(guard):
    class Session:  # the session API: feed(chunk) -> ScoreResult, flagged_at
        def __init__(self, threshold):
            self.threshold, self.fed, self.flagged_at = threshold, "", None

        def feed(self, chunk):
            self.fed += chunk
            score = min(1.0, len(self.fed) / 10)
            if score >= self.threshold and self.flagged_at is None:
                self.flagged_at = (len(self.fed), len(self.fed))  # e.g. (token, char)
            return ScoreResult(score, score >= self.threshold, self.threshold)

    class WithSession(CountingGuard):
        def stream(self, prompt=None, *, debounce=1, threshold=None):
            return Session(threshold)

    with TestClient(create_app(WithSession(guard), model_name="g", limits=LIMITS)) as c, \
            c.websocket_connect("/v1/stream") as ws:
        ws.send_json({"prompt": "p", "threshold": 0.5})
        assert ws.receive_json()["incremental"] is True
        got = []
        for chunk in ["abc", "de", "fgh"]:
            ws.send_json({"chunk": chunk})
            got.append(ws.receive_json())
    assert [g["score"] for g in got] == pytest.approx([0.3, 0.5, 0.8])
    assert [g["flagged_chunk"] for g in got] == [None, 1, 1]
    assert got[-1]["flagged_at"] == [5, 5]


def test_port_in_use_is_named_before_the_model_loads(capsys):
    """A taken port fails at once with the port in the message: the guard named here does not
    exist, so reaching the model load would give a different error."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["serve", "--model", "no-such-guard-folder", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"port {port}" in err and "--port" in err and len(err.splitlines()) == 1, err
