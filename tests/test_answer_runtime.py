"""The answer verdict at runtime: score(prompt=, response=), score_pairs, the session over answer
tokens, guarded generation, and a guard folder holding an answer head (siren.runtime.answer_head)."""

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LogitsProcessorList

from siren.artifact import CONFIG_NAME
from siren.errors import SirenError
from siren.features import answer_spans, join_prompt_response, normalize_text
from siren.runtime.answer_head import ANSWER_HEAD_WEIGHTS
from siren.runtime.guard import SirenGuard
from siren.runtime.stream_rules import StreamRule
from test_guard import make_guard
from test_stream import PROMPT, RESPONSE, WORDS, Force, causal_guard, chunkings, tokens_run_per_char
from tiny_models import load_base

PAIRS = [(PROMPT, "You can mix flour, water and yeast."), ("tell me a joke", "I cannot help with that request."),
         (None, "write a poem about the sea"), ("explain how to make a weapon", ""), ("what is the capital", None),
         ("<|im_start|>user hi<|im_end|>", "  the quick brown fox"), ("", "the lazy dog")]


def add_answer_head(folder: Path, *, shared=False, threshold=0.4, stream=None, seed=7, mlp_dims=(8,), main_weight=None,
                    decision_threshold=None):
    """Write a small random answer head into a guard folder (the contract's layout); returns it."""
    from safetensors.torch import save_file
    from siren.mlp import MLPHead

    config = json.loads((folder / CONFIG_NAME).read_text())
    entry = {"weights": None, "mlp": None, "shared": True, "threshold": threshold,
             "stream": stream or {"debounce": 1, "min_answer_tokens": 0, "ema": None}}
    head = None
    if not shared:
        torch.manual_seed(seed)
        head = MLPHead(config["mlp"]["input_dim"], list(mlp_dims), [0.0] * len(mlp_dims)).eval()
        with torch.no_grad():
            for p in head.parameters():
                p.mul_(4.0)  # spread the scores
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(folder / ANSWER_HEAD_WEIGHTS))
        entry.update(weights=ANSWER_HEAD_WEIGHTS, shared=False,
                     mlp={"input_dim": config["mlp"]["input_dim"], "layer_dims": list(mlp_dims),
                          "dropout_rates": [0.0] * len(mlp_dims), "num_classes": 2})
    if main_weight is not None:
        entry["main_weight"] = main_weight
    if decision_threshold is not None:
        entry["decision_threshold"] = decision_threshold
    config.setdefault("siren", {})["answer_head"] = entry
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return head


def answer_guard(tmp_path, base_dir, **kw):
    folder, head, selection, weights = make_guard(tmp_path / "g", base_dir, max_length=kw.pop("max_length", 64))
    answer = add_answer_head(folder, **kw)
    return SirenGuard.from_pretrained(str(folder), device="cpu"), head, answer, selection, weights


def direct_answer(base_dir, head, selection, weights, pairs, max_length=64):
    """Unbatched reference: the full text's hidden states, mean over the answer's tokens, select, weight, head."""
    model, tok = load_base(base_dir), AutoTokenizer.from_pretrained(base_dir)
    ids, starts = answer_spans(tok, pairs, max_length)
    out = []
    for row, s in zip(ids, starts):
        if s >= len(row):
            out.append(None)
            continue
        with torch.no_grad():
            res = model(input_ids=torch.tensor([row]), output_hidden_states=True)
        parts = [res.hidden_states[l + 1][0][s:].mean(0)[torch.as_tensor(selection[l])] * weights[l]
                 for l in sorted(selection)]
        with torch.no_grad():
            out.append(torch.softmax(head(torch.cat(parts)[None]), -1)[0, 1].item())
    return out


def test_answer_pairs_pool_the_answer_tokens_only(tmp_path, tiny_dir):
    guard, head, answer, selection, weights = answer_guard(tmp_path, tiny_dir)
    assert guard.has_answer_head and guard.answer_threshold == 0.4
    got = guard.score_pairs(PAIRS, batch_tokens=48)  # several batches
    want = direct_answer(tiny_dir, answer, selection, weights, PAIRS)
    for (p, r), res, w in zip(PAIRS, got, want):
        one = guard.score(prompt=p, response=r)
        assert res.score == pytest.approx(one.score, abs=1e-6)
        # The whole text's verdict is today's (llm-siren's); the prompt's is the prompt scored alone.
        assert res.score == pytest.approx(guard.score(join_prompt_response(p, r)).score, abs=1e-6)
        if p is None:
            assert res.prompt is None
        else:
            alone = guard.score(p)
            assert res.prompt.score == pytest.approx(alone.score, abs=1e-4) and res.prompt.threshold == 0.5
        if w is None:
            assert res.response is None and one.response is None
        else:
            assert res.response.score == pytest.approx(w, abs=1e-4) and res.response.threshold == 0.4
            assert res.response.is_harmful == (res.response.score >= 0.4)
    assert sum(w is not None for w in want) == 5 and np.ptp([w for w in want if w is not None]) > 0.01
    assert got[0].to_dict()["response"]["threshold"] == 0.4
    assert guard.score_pairs([]) == []
    with pytest.raises(SirenError, match="pair 0"):
        guard.score_pairs([(None, None)])


def test_prompt_verdict_is_the_prompt_alone_when_its_tokens_differ(tmp_path, tiny_llama_dir):
    guard, *_ = answer_guard(tmp_path, tiny_llama_dir)
    # "   " scores as " ", whose tokens do not open "  \nthe lazy dog" normalised: scored apart.
    res = guard.score(prompt="   ", response="the lazy dog")
    assert res.prompt.score == pytest.approx(guard.score(" ").score, abs=1e-6)


def test_answer_features_and_prefix_cuts(tmp_path, tiny_llama_dir):
    guard, _head, answer, selection, weights = answer_guard(tmp_path, tiny_llama_dir)
    z, zp = guard.answer_features(PAIRS, cuts=(1, 4, 40))
    assert z.shape == (len(PAIRS), guard.input_dim) and zp.shape == (len(PAIRS), 3, guard.input_dim)
    probs = guard.answer_proba_from_features(np.nan_to_num(z))
    for i, res in enumerate(guard.score_pairs(PAIRS)):
        if res.response is None:
            assert np.isnan(z[i]).all() and np.isnan(zp[i]).all()
        else:
            assert probs[i] == pytest.approx(res.response.score, abs=1e-5)
    # A prefix of t answer tokens equals the answer verdict's features of the answer cut there.
    tok = guard.backbone.tokenizer
    ids, starts = answer_spans(tok, PAIRS[:1], 64)
    four = tok.decode(ids[0][starts[0]:starts[0] + 4])
    cut = guard.answer_features([(PROMPT, four)])
    np.testing.assert_allclose(zp[0, 1], cut[0], atol=1e-5)
    assert np.isnan(zp[0, 2]).all()  # the first answer is shorter than 40 tokens


def test_shared_answer_head_and_guards_without_one(tmp_path, tiny_llama_dir):
    guard, head, _none, selection, weights = answer_guard(tmp_path, tiny_llama_dir, shared=True)
    assert guard.answer_head is guard.head
    want = direct_answer(tiny_llama_dir, head, selection, weights, PAIRS[:2])
    got = guard.score_pairs(PAIRS[:2])
    np.testing.assert_allclose([r.response.score for r in got], want, atol=1e-4)
    folder, *_ = make_guard(tmp_path / "plain", tiny_llama_dir)
    plain = SirenGuard.from_pretrained(str(folder), device="cpu")
    assert not plain.has_answer_head and plain.answer_threshold is None
    res = plain.score(prompt=PROMPT, response="You can mix")
    assert res.response is None and res.prompt is not None
    with pytest.raises(SirenError, match="no answer head"):
        plain.answer_proba_from_features(np.zeros((1, plain.input_dim)))


@pytest.mark.parametrize("edit,message", [
    (lambda e: e.pop("threshold"), "no threshold"),
    (lambda e: e.update(threshold=2), "threshold"),
    (lambda e: e["mlp"].update(input_dim=3), "another guard"),
    (lambda e: e.update(weights="../x.safetensors"), "must name a file"),
    (lambda e: e.update(shared=True), "weights and mlp must be null"),
    (lambda e: e.update(stream={"debounce": 0}), "debounce"),
    (lambda e: e.update(weights="missing.safetensors"), "missing"),
    (lambda e: e.update(main_weight=1.5), "main_weight"),
    (lambda e: e.update(main_weight=True), "main_weight"),
])
def test_bad_answer_head_entries(tmp_path, tiny_llama_dir, edit, message):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir)
    add_answer_head(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    edit(config["siren"]["answer_head"])
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(SirenError, match=message):
        SirenGuard.from_pretrained(str(folder), device="cpu")


# ---------------------------------------------------------------- the session over answer tokens

@pytest.mark.parametrize("names", [("chars", "words", "random")])
def test_session_answer_equals_score_at_every_chunk_boundary(tmp_path, tiny_dir, names):
    guard, *_ = answer_guard(tmp_path, tiny_dir)
    for name in names:
        session = guard.stream(prompt=PROMPT)
        so_far, answers = "", []
        for chunk in chunkings(RESPONSE)[name]:
            so_far += chunk
            got, want = session.feed(chunk), guard.score(prompt=PROMPT, response=so_far)
            assert got.score == pytest.approx(want.score, abs=1e-4)
            assert got.prompt == session.result.prompt and got.prompt.score == pytest.approx(want.prompt.score, abs=1e-4)
            assert (got.response is None) == (want.response is None), (name, so_far)
            if got.response is not None:
                assert got.response.score == pytest.approx(want.response.score, abs=1e-4), (name, so_far)
                answers.append(got.response.score)
        assert session.n_tokens == 64 and np.ptp(answers) > 2e-3


def test_blend_with_the_main_head_in_scores_and_the_session(tmp_path, tiny_dir):
    """main_weight w: the answer verdict is (1 - w) * answer head + w * main head on the same answer
    pool, in score_pairs and in the session (== score() at every chunk boundary)."""
    guard, head, answer, selection, weights = answer_guard(tmp_path, tiny_dir, main_weight=0.25)
    assert guard.answer_spec.main_weight == 0.25
    want = 0.75 * np.asarray(direct_answer(tiny_dir, answer, selection, weights, PAIRS[:2])) + \
        0.25 * np.asarray(direct_answer(tiny_dir, head, selection, weights, PAIRS[:2]))
    np.testing.assert_allclose([r.response.score for r in guard.score_pairs(PAIRS[:2])], want, atol=1e-4)
    alone = SirenGuard.from_pretrained(str(tmp_path / "g"), device="cpu")
    alone.answer_spec = dataclasses.replace(alone.answer_spec, main_weight=0.0)
    assert abs(alone.score_pairs(PAIRS[:1])[0].response.score - want[0]) > 1e-3   # the blend changes the score
    session, so_far = guard.stream(prompt=PROMPT), ""
    for chunk in chunkings(RESPONSE)["words"]:
        so_far += chunk
        got, ref = session.feed(chunk).response, guard.score(prompt=PROMPT, response=so_far).response
        assert (got is None) == (ref is None)
        if got is not None:
            assert got.score == pytest.approx(ref.score, abs=1e-4), so_far
    shared, *_ = answer_guard(tmp_path / "s", tiny_dir, shared=True, main_weight=0.5)
    assert shared.answer_spec.main_weight == 0.0    # shared: the main head already is the answer head


def test_session_without_prompt_and_whitespace_chunks(tmp_path, tiny_llama_dir):
    guard, *_ = answer_guard(tmp_path, tiny_llama_dir)
    session = guard.stream()
    so_far = ""
    for chunk in ["", "  ", "<|im_", "start|>", "user", " tell me", "\n\n\n", " a joke  "]:
        so_far += chunk
        got, want = session.feed(chunk), guard.score(response=so_far)
        assert got.prompt is None and (got.response is None) == (want.response is None)
        if got.response is not None:
            assert got.response.score == pytest.approx(want.response.score, abs=1e-4)


def test_session_answer_cost_per_feed_is_constant(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, max_length=256)
    add_answer_head(folder)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    session = guard.stream(prompt=PROMPT)
    per_feed = tokens_run_per_char(session, WORDS)
    longest_word = max(len(guard.backbone.tokenizer(" " + w)["input_ids"]) for w in WORDS.split())
    assert session.n_tokens > 100 and max(per_feed[1:]) <= longest_word + 1
    # The rows before the answer are summed once, not at every feed.
    assert session._before_answer is not None and session._before_answer[0] == session.n_tokens - session.answer_tokens
    assert session.feed("").response.score == pytest.approx(
        guard.score(prompt=PROMPT, response=WORDS).response.score, abs=1e-4)


def test_session_stops_on_the_answer_under_the_rule(tmp_path, tiny_llama_dir):
    guard, *_ = answer_guard(tmp_path, tiny_llama_dir, stream={"debounce": 2, "min_answer_tokens": 3, "ema": None})
    assert guard.stream_rule() == StreamRule(0.4, 2, 3, None)
    session = guard.stream(prompt=PROMPT, rule=StreamRule(0.0, 2, 3, None))
    for word in "You can mix flour water and yeast".split():
        session.feed(word + " ")
        if session.flagged:
            break
    assert session.flagged and session.flagged_by == "response"
    point = session.flagged_at
    assert point.answer_tokens >= 3 and point.char is not None
    # The old keyword still works, on the answer verdict's rule.
    s2 = guard.stream(prompt=PROMPT, debounce=5)
    assert s2.rule == StreamRule(0.4, 5, 3, None) and s2.flagged_by is None
    with pytest.raises(SirenError, match="not both"):
        guard.stream(prompt=PROMPT, rule=StreamRule(0.5), debounce=2)
    # Without an answer head the whole text decides, as before.
    folder, *_ = make_guard(tmp_path / "plain", tiny_llama_dir)
    plain = SirenGuard.from_pretrained(str(folder), device="cpu").stream(prompt=PROMPT, threshold=0.0)
    plain.feed("You")
    assert plain.flagged and plain.flagged_by == "text"


# ---------------------------------------------------------------- guarded generation

def test_in_process_answer_verdict_and_stop(tmp_path, tiny_llama_dir):
    guard, causal, tok = causal_guard(tmp_path, tiny_llama_dir, max_length=64)
    add_answer_head(tmp_path / "g")
    guard = SirenGuard.from_pretrained(str(tmp_path / "g"), backbone=guard.backbone)
    response = "You can mix flour, water and yeast. the quick brown fox"
    ids = tok(PROMPT + "\n" + response)["input_ids"]
    k = len(tok(PROMPT + "\n")["input_ids"])
    with guard.attach(causal, stop=False) as guarded:
        causal.generate(torch.tensor([ids[:k]]), logits_processor=LogitsProcessorList([Force([ids])]),
                        stopping_criteria=[guarded], max_new_tokens=len(ids) - k, do_sample=False, pad_token_id=1)
        last = guarded.results()[0]
    compared = 0
    assert guarded.response_history[0] == [None]  # no answer token read yet
    for step, [score] in enumerate(guarded.response_history[1:], start=1):
        answer = tok.decode(ids[k:k + step])
        z = guard.extractor.span_features([ids[:k + step]], [[(k, k + step)]])[0]
        assert score == pytest.approx(float(guard.answer_proba_from_features(z.numpy())[0]), abs=1e-4)
        if tok(normalize_text(PROMPT + "\n" + answer))["input_ids"] == ids[:k + step]:
            assert score == pytest.approx(guard.score(prompt=PROMPT, response=answer).response.score, abs=1e-4)
            compared += 1
    assert compared >= len(guarded.response_history) - 4
    # The prompt's verdict: the main head on the tokens of the prompt's forward, as the model read them.
    prompt_score = float(guard.proba_from_features(guard.extractor([ids[:k]]).numpy())[0])
    assert last.prompt.score == pytest.approx(prompt_score, abs=1e-4)
    # Stops on the answer verdict, never before min_answer_tokens answer tokens were read.
    with guard.attach(causal, rule=StreamRule(0.0, 2, 3, None), tokenizer=tok) as guarded:
        out = causal.generate(torch.tensor([ids[:k]]), stopping_criteria=[guarded], max_new_tokens=20,
                              do_sample=False, pad_token_id=1)
    [point] = guarded.flagged_at
    assert guarded.flagged_by == ["response"] and point.answer_tokens == 3 and out.shape[1] - k == 5


# ---------------------------------------------------------------- no import cycles

def test_runtime_modules_import_one_way():
    """guard -> generation -> stream -> extractor/answer_head/stream_rules/results: nothing below imports up."""
    runtime = Path(__file__).resolve().parent.parent / "siren" / "runtime"
    below = {"stream": {"guard", "generation"}, "generation": {"guard"}, "extractor": {"guard", "stream", "generation"},
             "answer_head": {"guard", "stream", "generation"}}
    for module, forbidden in below.items():
        tree = ast.parse((runtime / f"{module}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {f"siren.runtime.{f}" for f in forbidden} & imported, module
    guard_tree = ast.parse((runtime / "guard.py").read_text())
    nested = [n for f in ast.walk(guard_tree) if isinstance(f, ast.FunctionDef)
              for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in nested if getattr(n, "module", "") and "siren.runtime" in n.module]


def test_logistic_answer_head_as_training_writes_it(tmp_path, tiny_llama_dir):
    """layer_dims [] (one Linear, `network.0.*`): the head siren train's answer stage stores."""
    guard, _head, answer, selection, weights = answer_guard(tmp_path, tiny_llama_dir, mlp_dims=())
    assert len(answer.state_dict()) == 2
    want = direct_answer(tiny_llama_dir, answer, selection, weights, PAIRS[:2])
    np.testing.assert_allclose([r.response.score for r in guard.score_pairs(PAIRS[:2])], want, atol=1e-4)


def test_folder_with_an_answer_head_loads_in_llm_siren_with_equal_scores(tmp_path, tiny_llama_dir):
    siren_guard = pytest.importorskip("siren_guard")
    guard, *_ = answer_guard(tmp_path, tiny_llama_dir)
    theirs = siren_guard.SirenGuard.from_pretrained(str(tmp_path / "g"), device="cpu", dtype=torch.float32)
    try:
        for p, r in PAIRS[:3]:
            want = theirs.score(prompt=p, response=r).score
            assert guard.score(prompt=p, response=r).score == pytest.approx(want, abs=1e-4)
    finally:
        theirs.close()


def test_finished_answers_and_streams_have_their_own_thresholds(tmp_path, tiny_dir):
    """`decision_threshold` judges a finished answer (score(), score_pairs, a session's
    `.response`); `threshold` is the stream rule's stop. A folder without decision_threshold
    uses its one threshold for both (folders written before the split)."""
    guard, *_ = answer_guard(tmp_path, tiny_dir, threshold=0.9, decision_threshold=0.3)
    assert guard.answer_threshold == 0.3 and guard.stream_threshold == 0.9
    res = guard.score(prompt=PROMPT, response=RESPONSE)
    assert res.response.threshold == 0.3 and res.response.is_harmful is (res.response.score >= 0.3)
    session = guard.stream(PROMPT)
    assert session.rule.threshold == 0.9
    fed = session.feed(RESPONSE)
    assert fed.response.threshold == 0.3
    assert fed.response.score == pytest.approx(res.response.score, abs=1e-4)
    from siren.runtime.serve_pairs import stop_threshold

    assert stop_threshold(guard, None, 0.5) == 0.9 and stop_threshold(guard, 0.2, 0.5) == 0.2
    old, *_ = answer_guard(tmp_path / "old", tiny_dir, threshold=0.7)
    assert old.answer_threshold == old.stream_threshold == 0.7


def test_a_bad_decision_threshold_is_named(tmp_path, tiny_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_dir, max_length=64)
    add_answer_head(folder, decision_threshold=1.5)
    with pytest.raises(SirenError, match="decision_threshold"):
        SirenGuard.from_pretrained(str(folder), device="cpu")


def test_score_cli_prints_both_verdicts_of_a_pair(tmp_path, tiny_dir, capsys, monkeypatch):
    import io

    from siren.cli import main

    folder, *_ = make_guard(tmp_path / "g", tiny_dir, max_length=64)
    add_answer_head(folder, threshold=0.9, decision_threshold=0.3)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    want = guard.score(prompt=PROMPT, response=RESPONSE)
    assert main(["score", "--model", str(folder), "--prompt", PROMPT, "--response", RESPONSE]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["response"] == {"score": pytest.approx(want.response.score, abs=1e-5),
                               "is_harmful": want.response.is_harmful, "threshold": 0.3}
    assert row["prompt"]["score"] == pytest.approx(want.prompt.score, abs=1e-5)
    lines = [{"prompt": PROMPT, "response": RESPONSE}, {"text": "just a text"}, {"prompt": "p", "response": "r"}]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(json.dumps(x) for x in lines) + "\n"))
    assert main(["score", "--model", str(folder), "--jsonl"]) == 0
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [("response" in g, "prompt" in g) for g in got] == [(True, True), (False, False), (True, True)]
    assert got[0]["response"]["score"] == pytest.approx(want.response.score, abs=1e-5)
    assert got[1]["score"] == pytest.approx(guard.score("just a text").score, abs=1e-5)
