"""`siren serve` with two verdicts: pairs and chat messages in /v1/score and /v1/moderations, the
prompt's and the answer's verdicts in the outputs and the stream, `flagged_by`.

The answer-verdict API (`score_pairs`, `ScoreResult.prompt/.response`, `stream(prompt, rule=)`,
`session.flagged_by`, `has_answer_head`) is the runtime's; `PairGuard` stands in for it with
the same methods over the tiny guard, so these tests also hold once the real one lands."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from siren.runtime.guard import SirenGuard  # noqa: E402
from siren.runtime.results import ScoreResult, Verdict  # noqa: E402
from siren.runtime.serve import RequestError, create_app, serve_limits, parse_moderation, parse_score  # noqa: E402
from siren.runtime.serve_pairs import MODERATION_VERDICTS_FIELD, messages_pair  # noqa: E402
from siren.runtime.stream_rules import StreamRule  # noqa: E402
from test_guard import TEXTS, make_guard  # noqa: E402

LIMITS = serve_limits(max_batch_size=32, max_wait_ms=2, max_items=8, max_chars=2000, max_body_bytes=64 * 1024,
                     max_queue=64, max_stream_chunks=50, batch_tokens=4096)
ANSWER_THRESHOLD = 0.37


class PairGuard:
    """The tiny guard with the contract's answer-verdict API. Its answer verdict is a stand-in
    (the score of the answer alone): what matters here is that the server carries both verdicts."""

    has_answer_head = True
    answer_threshold = stream_threshold = ANSWER_THRESHOLD

    def __init__(self, guard: SirenGuard, *, debounce: int = 2):
        self.guard = guard
        self.backbone, self.max_length = guard.backbone, guard.max_length
        self.default_threshold = guard.default_threshold
        stream = {"debounce": debounce, "min_answer_tokens": 0, "ema": None}
        self.config = {"siren": {"answer_head": {"stream": stream}}}
        self.rules = []

    def score_batch(self, *a, **kw):
        return self.guard.score_batch(*a, **kw)

    def score_streaming(self, *a, **kw):
        return self.guard.score_streaming(*a, **kw)

    def answer_score(self, response: str) -> float:
        return self.guard.score(response).score

    def score_pairs(self, pairs, *, threshold=None, batch_size=32, batch_tokens=16384):
        thr = self.default_threshold if threshold is None else threshold
        out = []
        for p, r in pairs:
            whole = self.guard.score(prompt=p, response=r, threshold=thr)
            whole.prompt = None if p is None else Verdict.of(self.guard.score(p).score, thr)
            whole.response = None if not r else Verdict.of(self.answer_score(r), ANSWER_THRESHOLD)
            out.append(whole)
        return out

    def stream(self, prompt=None, *, rule: StreamRule | None = None, threshold: float | None = None):
        outer, rule = self, rule or StreamRule(ANSWER_THRESHOLD, 2)
        self.rules.append(rule)

        class Session:
            flagged_by = "response"

            def __init__(self):
                self.text, self.state, self.tokens = "", rule.start(), 0

            @property
            def flagged_at(self):
                return self.state.flagged_at

            def feed(self, chunk):
                self.text += chunk
                self.tokens += 1
                [r] = outer.score_pairs([(prompt, self.text)])
                self.state.update(self.tokens, r.response.score)
                return r

        return Session()


@pytest.fixture(scope="module")
def guard(tmp_path_factory, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path_factory.mktemp("serve-pairs") / "guard", tiny_llama_dir)
    return SirenGuard.from_pretrained(str(folder), device="cpu")


@pytest.fixture
def pair_client(guard):
    g = PairGuard(guard)
    with TestClient(create_app(g, model_name="pair-guard", limits=LIMITS)) as c:
        c.guard = g
        yield c


def err(message, param=None):
    return RequestError(400, message, param=param)


def test_messages_pair_says_which_turn_is_which():
    msgs = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply one"}, {"role": "user", "content": "second"},
            {"role": "assistant", "content": [{"type": "text", "text": "reply "}, {"type": "text", "text": "two"}]}]
    assert messages_pair(msgs, "m", err) == ("second", "reply two")   # the last answer and its request
    assert messages_pair(msgs[:4], "m", err) == ("second", None)      # ends with a request: the request alone
    assert messages_pair(msgs[2:3], "m", err) == (None, "reply one")  # an answer with no request
    for bad in ([], [{"role": "system", "content": "x"}], [{"content": "x"}], [{"role": "user", "content": 3}]):
        with pytest.raises(RequestError):
            messages_pair(bad, "m", err)


def test_parse_pairs_and_messages():
    items, thr = parse_score({"items": [{"text": "a"}, {"prompt": "p", "response": "r"},
                                        {"messages": [{"role": "user", "content": "p"},
                                                      {"role": "assistant", "content": "r"}]}],
                              "threshold": 0.3}, LIMITS)
    assert thr == 0.3 and [i.pair for i in items] == [None, ("p", "r"), ("p", "r")]
    assert items[1].text == items[2].text == "p\nr"
    mod = parse_moderation({"input": ["plain", {"prompt": "p", "response": "r"}]}, LIMITS)
    assert [i.pair for i in mod] == [None, ("p", "r")]
    [conv] = parse_moderation({"messages": [{"role": "user", "content": "p"}]}, LIMITS)
    assert conv.pair == ("p", None)
    with pytest.raises(RequestError, match="not both"):
        parse_score({"text": "a", "messages": []}, LIMITS)


def test_score_endpoint_gives_both_verdicts(pair_client, guard):
    g = pair_client.guard
    items = [{"text": TEXTS[0]}, {"prompt": TEXTS[1], "response": TEXTS[7]},
             {"messages": [{"role": "user", "content": TEXTS[3]}, {"role": "assistant", "content": TEXTS[4]}]},
             {"prompt": TEXTS[5]}]
    res = pair_client.post("/v1/score", json={"items": items}).json()["results"]
    assert "prompt" not in res[0] and "response" not in res[0]  # a plain text has one verdict
    assert res[0]["score"] == pytest.approx(guard.score(TEXTS[0]).score, abs=1e-5)
    for got, (p, r) in zip(res[1:3], ((TEXTS[1], TEXTS[7]), (TEXTS[3], TEXTS[4]))):
        assert got["score"] == pytest.approx(guard.score(prompt=p, response=r).score, abs=1e-5)
        assert got["prompt"]["score"] == pytest.approx(guard.score(p).score, abs=1e-5)
        assert got["response"]["score"] == pytest.approx(g.answer_score(r), abs=1e-5)
        assert got["response"]["threshold"] == ANSWER_THRESHOLD
        assert got["response"]["is_harmful"] is (got["response"]["score"] >= ANSWER_THRESHOLD)
    assert "response" not in res[3]
    assert res[3]["prompt"]["score"] == pytest.approx(guard.score(TEXTS[5]).score, abs=1e-5)
    thr = pair_client.post("/v1/score", json={"prompt": "a", "response": "b", "threshold": 0.01}).json()["results"][0]
    assert thr["threshold"] == 0.01 and thr["prompt"]["threshold"] == 0.01
    assert thr["response"]["threshold"] == ANSWER_THRESHOLD  # a request's threshold is the whole text's and prompt's


def test_moderations_carry_both_verdicts_in_an_extra_field(pair_client, guard):
    pair_input = {"prompt": TEXTS[1], "response": TEXTS[7]}
    body = pair_client.post("/v1/moderations", json={"input": [TEXTS[0], pair_input]}).json()
    plain, pair = body["results"]
    assert MODERATION_VERDICTS_FIELD not in plain
    assert set(pair[MODERATION_VERDICTS_FIELD]) == {"prompt", "response"}
    assert pair["category_scores"]["harmful"] == pytest.approx(guard.score(prompt=TEXTS[1], response=TEXTS[7]).score,
                                                               abs=1e-5)
    conv = pair_client.post("/v1/moderations", json={"messages": [{"role": "user", "content": TEXTS[1]},
                                                                  {"role": "assistant", "content": TEXTS[7]}]}).json()
    assert conv["results"][0][MODERATION_VERDICTS_FIELD] == pair[MODERATION_VERDICTS_FIELD]


def stream(client, start, chunks):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json(start)
        ready = ws.receive_json()
        got = []
        for c in chunks:
            ws.send_json({"chunk": c})
            got.append(ws.receive_json())
        ws.send_json({"end": True})
        return ready, got, ws.receive_json()


def test_stream_reports_both_verdicts_and_who_stopped_it(pair_client, guard):
    g = pair_client.guard
    chunks = ["Cream butter ", "and sugar, ", "then put ", "poison in ", "the frosting."]
    ready, got, done = stream(pair_client, {"prompt": "a cake recipe?", "threshold": 0.0}, chunks)
    assert ready["answer_head"] is True and ready["threshold"] == 0.0
    assert g.rules[-1] == StreamRule(0.0, 2, 0, None)  # the saved debounce, the client's threshold
    assert [m["flagged_by"] for m in got] == [None, "response", "response", "response", "response"]
    text = ""
    for m, c in zip(got, chunks):
        text += c
        assert m["prompt"]["score"] == pytest.approx(guard.score("a cake recipe?").score, abs=1e-5)
        assert m["response"]["score"] == pytest.approx(g.answer_score(text), abs=1e-5)
    # no client threshold: the answer head's decides, and the client's debounce wins
    ready, got, _ = stream(pair_client, {"prompt": "p", "debounce": 3}, chunks[:1])
    assert ready["threshold"] == ANSWER_THRESHOLD and g.rules[-1].debounce == 3


def test_stream_without_answer_head_is_flagged_by_the_text(guard):
    with TestClient(create_app(guard, model_name="tiny", limits=LIMITS)) as c:
        ready, got, _ = stream(c, {"prompt": "p", "threshold": 0.0}, ["a ", "b"])
    assert ready["answer_head"] is False
    assert [m["flagged_by"] for m in got] == ["text", "text"] and all(m["response"] is None for m in got)
