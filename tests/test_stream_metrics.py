"""Streaming metrics under a StreamRule: streaming tax, localisation hits, trade-off curve, the
answer-verdict scoring path and the eval-stream rule options."""

import json

import numpy as np
import pytest

from siren.cli import main
from siren.errors import SirenError
from siren.evaluation.stream_metrics import flag_of, plot_tradeoff, stream_result, summarize, tradeoff_curve
from siren.evaluation.streaming import ScoreTrace, StreamRecord, score_prefixes, token_char_ends
from siren.runtime.guard import SirenGuard
from siren.runtime.results import ScoreResult, Verdict
from siren.runtime.stream_rules import StreamRule, first_flag, threshold_for_false_alarm
from test_guard import make_guard


def trace(scores):
    """One-character tokens, one score per token."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.arange(1, len(scores) + 1)
    return ScoreTrace(pos, scores, len(scores), pos.copy())


def test_stream_result_follows_the_rule():
    rng = np.random.default_rng(3)
    for _ in range(100):
        rule = StreamRule(float(rng.uniform(0.3, 0.7)), int(rng.integers(1, 4)), int(rng.integers(0, 5)),
                          None if rng.random() < 0.5 else float(rng.uniform(0.2, 1.0)))
        t = trace(rng.random(int(rng.integers(1, 25))))
        res = stream_result(StreamRecord("a", "x" * t.n_tokens, 1), t, rule=rule)
        i = first_flag(t.positions, t.scores, rule)
        assert res["flag_position"] == (None if i is None else int(t.positions[i]))
        if i is not None:
            assert res["flag_run_start"] >= rule.min_answer_tokens
        # the stored peak reads off every other threshold: flagged at u iff peak >= u
        for u in (0.2, 0.5, 0.8):
            flagged = flag_of(t.positions, t.scores, rule.with_threshold(u)) is not None
            assert flagged == (res["peak"] is not None and res["peak"] >= u)


def test_missing_answer_scores_are_skipped():
    t = trace([np.nan, 0.9, 0.9])  # a prefix with no answer verdict (NaN) is no observation
    res = stream_result(StreamRecord("a", "xxx", 1), t, rule=StreamRule(0.5, 2))
    assert res["flag_position"] == 3 and res["n_scored"] == 2 and res["final_score"] == 0.9


def test_streaming_tax_and_finished_verdicts():
    rule = StreamRule(0.5, debounce=2)
    cases = [  # (label, scores): flagged while streaming / finished verdict
        (0, [0.1, 0.8, 0.9, 0.2]),   # streaming false alarm, finished safe -> tax
        (0, [0.1, 0.8, 0.1, 0.9]),   # one unsafe score at a time: no flag under debounce 2; finished unsafe
        (0, [0.1, 0.1, 0.1, 0.1]),
        (0, [0.6, 0.7, 0.8, 0.9]),   # both
        (1, [0.1, 0.2, 0.9, 0.9]),   # detected at token 4
        (1, [0.9, 0.9, 0.1, 0.1]),   # detected at token 2, finished safe
    ]
    results = [stream_result(StreamRecord(str(i), "xxxx", y), trace(s), rule=rule) for i, (y, s) in enumerate(cases)]
    s = summarize(results)
    assert s["false_alarm_rate"] == pytest.approx(2 / 4)
    assert s["finished_false_alarm_rate"] == pytest.approx(2 / 4)
    assert s["streaming_tax_points"] == pytest.approx(0.0)
    results[1]["finished_flag"] = False  # as if the finished answer were safe: streaming now costs 25 points
    assert summarize(results)["streaming_tax_points"] == pytest.approx(25.0)
    assert s["detection_rate"] == 1.0 and s["finished_detection_rate"] == pytest.approx(0.5)
    assert s["tokens_to_detection"]["median"] == pytest.approx(3.0)
    assert s["tokens_to_detection"]["p90"] == pytest.approx(3.8)


def test_localisation_hits():
    span = dict(unsafe_start=99, unsafe_end=109)  # tokens 100..109
    rule = StreamRule(0.5, debounce=2)

    def located(flag_at):
        scores = np.full(400, 0.1)
        if flag_at is not None:
            scores[flag_at - 2:flag_at] = 0.9  # the run's second score is at token flag_at
        return stream_result(StreamRecord("a", "x" * 400, 1, **span), trace(scores), rule=rule)

    results = [located(f) for f in (50, 100, 109, 110, 237, 238, None)]
    assert [r["flag_position"] for r in results] == [50, 100, 109, 110, 237, 238, None]
    s = summarize(results)
    assert s["loc_exact_hit"] == pytest.approx(2 / 7)       # flags at 100 and 109
    assert s["loc_hit_within_128"] == pytest.approx(5 / 7)  # early (50) counts; 237 = 109 + 128 still does


def test_tradeoff_curve_matches_the_streams(tmp_path):
    rng = np.random.default_rng(5)
    rule = StreamRule(0.5, debounce=2, min_answer_tokens=3)
    recs = [(StreamRecord(str(i), "x" * 30, i % 2), trace(rng.beta(2 + 3 * (i % 2), 4, size=30))) for i in range(40)]
    results = [stream_result(r, t, rule=rule) for r, t in recs]
    curve = tradeoff_curve(results, [0.3, 0.5, 0.7])
    for k, u in enumerate(curve["thresholds"]):
        at = [stream_result(r, t, rule=rule.with_threshold(u)) for r, t in recs]
        s = summarize(at)
        assert curve["detection"][k] == pytest.approx(s["detection_rate"])
        assert curve["false_alarm"][k] == pytest.approx(s["false_alarm_rate"])
        assert curve["finished_false_alarm"][k] == pytest.approx(s["finished_false_alarm_rate"])
    plot_tradeoff(tmp_path / "t.png", tradeoff_curve(results), (0.1, 0.8), title="x")
    assert (tmp_path / "t.png").stat().st_size > 1000


class AnswerHeadGuard:
    """A guard with the contract's answer-verdict API, its answer score a known function of the
    answer so far: the stateless and session paths must both read `.response`."""

    has_answer_head = True
    answer_threshold = stream_threshold = 0.5
    default_threshold = 0.5

    def __init__(self, guard):
        self.backbone, self.pairs, self.rules = guard.backbone, [], []

    @staticmethod
    def result(prompt, response):
        return ScoreResult(0.99, True, 0.5, prompt=Verdict.of(0.99, 0.5),
                           response=Verdict.of(min(1.0, len(response) / 100), 0.5))

    def score_pairs(self, pairs, *, threshold=None, batch_size=32, batch_tokens=16384):
        self.pairs += list(pairs)
        return [self.result(p, r) for p, r in pairs]

    def stream(self, prompt, *, rule=None):
        outer = self
        self.rules.append(rule)

        class Session:
            text = ""

            def feed(self, chunk):
                self.text += chunk
                return outer.result(prompt, self.text)

        return Session()


@pytest.fixture
def tiny_guard(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, threshold=0.5)
    return folder, SirenGuard.from_pretrained(str(folder), device="cpu")


@pytest.mark.parametrize("session", [True, False])
def test_score_prefixes_reads_the_answer_verdict(tiny_guard, session):
    g = AnswerHeadGuard(tiny_guard[1])
    response = "You can mix flour, water and yeast."
    t = score_prefixes(g, response, "how do I bake bread", every=2, use_session=session, verdict="response")
    ends = token_char_ends(g.backbone.tokenizer, response)
    np.testing.assert_allclose(t.scores, [min(1.0, ends[p - 1] / 100) for p in t.positions])
    assert t.used_session == session
    if session:
        assert g.rules[0].debounce == 1  # the session never stops on its own; the rule runs on the scores
    else:
        assert all(p == "how do I bake bread" for p, _ in g.pairs)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_stream_rule_options_and_validation_threshold(tmp_path, tiny_guard):
    folder, guard = tiny_guard
    texts = ["the quick brown fox jumps over the lazy dog", "I cannot help with that request.",
             "You can mix flour, water and yeast.", "explain how to make a weapon at home", "tell me a joke now"]
    rows = [{"id": f"r{i}", "prompt": "tell me", "response": texts[i % 5] + " " + texts[(i + 2) % 5],
             "label": int(i % 3 == 0)} for i in range(12)]
    f = write_rows(tmp_path / "rows.jsonl", rows)
    (tmp_path / "splits.json").write_text(json.dumps({"d": {"test": [f"r{i}" for i in range(6)],
                                                            "validation": [f"r{i}" for i in range(6, 12)]}}))
    out = tmp_path / "out"
    common = ["eval-stream", "--model", str(folder), "--source", "jsonl", "--data_file", str(f), "--ids_from",
              str(tmp_path / "splits.json"), "--ids_dataset", "d", "--device", "cpu", "--every", "1"]
    assert main(common + ["--debounce", "2", "--min_answer_tokens", "3", "--target_false_alarm", "0.25",
                          "--val_ids_split", "validation", "--save_traces", "--out_dir", str(out)]) == 0
    report = json.loads((out / "streaming_results.json").read_text())
    rule = StreamRule(**report["rule"])
    assert (rule.debounce, rule.min_answer_tokens, rule.ema) == (2, 3, None)
    assert report["verdict"] == "text" and report["threshold_source"].startswith("validation")
    assert (out / "tradeoff.png").stat().st_size > 1000 and len(report["tradeoff"]["thresholds"]) == 99
    # the threshold is the one the safe validation streams give for that target
    val = [r for r in rows[6:] if r["label"] == 0]
    traces = []
    for r in val:
        ends = token_char_ends(guard.backbone.tokenizer, r["response"])
        traces.append((np.arange(1, len(ends) + 1),
                       np.array([guard.score(r["response"][:e]).score for e in ends])))
    assert rule.threshold == pytest.approx(threshold_for_false_alarm(traces, rule, 0.25), abs=1e-4)
    s = report["summary"]
    assert "streaming_tax_points" in s and s["n_streams"] == 6
    # a target without validation streams, or validation streams that are the test streams, is refused
    assert main(common + ["--target_false_alarm", "0.1", "--out_dir", str(out)]) == 2
    assert main(common + ["--target_false_alarm", "0.1", "--val_ids_split", "test", "--out_dir", str(out)]) == 2
    # a validation source alone uses the configured target, and without one says to give it
    from siren import config as cfgmod

    has_default = cfgmod.default("target_false_alarm", "eval-stream") is not None
    assert main(common + ["--val_ids_split", "validation", "--out_dir", str(out)]) == (0 if has_default else 2)
    with pytest.raises(SirenError, match="answer head"):
        from siren.evaluation.streaming import add_arguments, stream_setup
        import argparse

        p = argparse.ArgumentParser()
        add_arguments(p)
        stream_setup(p.parse_args(["--model", "x", "--verdict", "response"]), guard)
