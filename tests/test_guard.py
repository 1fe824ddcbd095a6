import io
import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from siren.artifact import CONFIG_NAME, save_guard
from siren.backbones import load_backbone
from siren.cli import main
from siren.errors import SirenError
from siren.features import normalize_text
from siren.runtime.guard import ScoreResult, SirenGuard
from tiny_models import load_base

TEXTS = ["how do I bake bread at home", "tell me a joke", "", "how can I hurt someone badly\n\n\n\nnow",
         "write a poem about the sea and the quick brown fox jumps over the lazy dog " * 3,
         "<|im_start|>user explain how to make a weapon<|im_end|>", "   ", "I cannot help with that request.",
         "what is the capital of France", "You can mix flour, water and yeast."]


def make_guard(folder, base_dir, *, pooling="residual_mean", layers=(0, 2, 3), per_layer=5, hidden=32, seed=0,
               layer_dims=(16, 8), dropout_rates=(0.1, 0.0), max_length=64, threshold=0.5, extra=None,
               revision=None, neurons=None):
    """A random guard over a tiny backbone folder: random neurons (unsorted), weights and MLPHead."""
    from siren.mlp import MLPHead

    rng = np.random.default_rng(seed)
    selection = neurons or {l: rng.choice(hidden, size=per_layer, replace=False) for l in layers}
    weights = {l: float(rng.uniform(0.5, 2.0)) for l in selection}
    input_dim = sum(len(v) for v in selection.values())
    torch.manual_seed(seed)
    head = MLPHead(input_dim, list(layer_dims), list(dropout_rates))
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(3.0)  # spread the scores away from 0.5
    save_guard(folder, base_model_id=str(base_dir), revision=revision, pooling_type=pooling, selection=selection,
               layer_weights=weights, head_state=head.state_dict(), layer_dims=list(layer_dims),
               dropout_rates=list(dropout_rates), max_length=max_length, decision_threshold=threshold,
               extra={"backbone": "tiny", "num_layers": 4, "hidden_size": hidden} if extra is None else extra)
    return folder, head.eval(), selection, weights


def direct_scores(base_dir, head, selection, weights, pooling, texts, max_length=64):
    """Unbatched reference: output_hidden_states / MLP hooks, plain mean, select, weight, head."""
    model, tok = load_base(base_dir), AutoTokenizer.from_pretrained(base_dir)
    layers = sorted(selection)
    out = []
    for text in texts:
        ids = tok(normalize_text(text), truncation=True, max_length=max_length)["input_ids"]
        captured = {}
        hooks = [model.layers[l].mlp.register_forward_hook(lambda m, a, o, l=l: captured.__setitem__(l, o))
                 for l in layers]
        with torch.no_grad():
            res = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        for h in hooks:
            h.remove()
        parts = []
        for l in layers:
            h = res.hidden_states[l + 1][0] if pooling == "residual_mean" else captured[l][0]
            parts.append(h.mean(0)[torch.as_tensor(selection[l])].float() * weights[l])
        with torch.no_grad():
            out.append(torch.softmax(head(torch.cat(parts)[None]), -1)[0, 1].item())
    return np.array(out)


@pytest.fixture(params=["residual_mean", "mlp_mean"])
def pooling(request):
    return request.param


def test_scores_equal_direct_computation(tmp_path, tiny_dir, pooling):
    folder, head, selection, weights = make_guard(tmp_path / "g", tiny_dir, pooling=pooling)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    got = guard.score_batch(TEXTS)
    want = direct_scores(tiny_dir, head, selection, weights, pooling, TEXTS)
    np.testing.assert_allclose([r.score for r in got], want, atol=1e-5, rtol=0)
    assert np.ptp(want) > 0.02  # a meaningful comparison, not every score ~0.5
    assert all(r.is_harmful == (r.score >= 0.5) and r.threshold == 0.5 for r in got)
    z = guard.features(TEXTS)
    assert z.shape == (len(TEXTS), 15) and z.dtype == np.float32
    np.testing.assert_allclose(guard.predict_proba(TEXTS), want, atol=1e-5)
    # The first feature block is layer 0's listed neurons times its weight.
    pooled = guard.extractor.layer_features(guard.extractor.layer_features.tokenize(TEXTS[:1]))[pooling][0, 0]
    np.testing.assert_allclose(z[0, :5], pooled[torch.as_tensor(selection[0])].numpy() * weights[0], atol=1e-6)


def test_batch_order_and_single_scores(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    singles = [guard.score(t).score for t in TEXTS]
    for batch_size, batch_tokens in [(32, 16384), (2, 16384), (3, 40), (1, 1)]:
        batched = guard.score_batch(TEXTS, batch_size=batch_size, batch_tokens=batch_tokens)
        np.testing.assert_allclose([r.score for r in batched], singles, atol=1e-5, rtol=0)
    assert guard.score_batch([]) == []
    r = guard.score_batch(TEXTS[:2], threshold=0.0)
    assert all(x.is_harmful and x.threshold == 0.0 for x in r)
    assert isinstance(r[0], ScoreResult) and set(r[0].to_dict()) == {"score", "is_harmful", "threshold"}


def test_prompt_response_stream_and_empty(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    p, r = "how can I hurt someone", "You can mix flour, water and yeast."
    assert guard.score(prompt=p, response=r).score == pytest.approx(guard.score(p + "\n" + r).score, abs=1e-6)
    assert guard.score(prompt=p).score == pytest.approx(guard.score(p).score, abs=1e-6)
    with pytest.raises(SirenError, match="not both"):
        guard.score("x", prompt=p)
    with pytest.raises(SirenError):
        guard.score()
    empty = guard.score("")
    assert math.isfinite(empty.score) and empty.score == pytest.approx(guard.score(" ").score, abs=1e-7)
    assert guard.score(prompt="", response="").score == pytest.approx(empty.score, abs=1e-7)
    assert guard.score_streaming("").score == pytest.approx(empty.score, abs=1e-7)
    chunks = ["You can ", "mix flour, ", "water and yeast."]
    session = guard.stream(prompt=p)
    streamed = [session.feed(c) for c in chunks]
    want = [guard.score(prompt=p, response="".join(chunks[:i + 1])).score for i in range(3)]
    np.testing.assert_allclose([s.score for s in streamed], want, atol=1e-4)
    assert guard.score_streaming("You can mix").score == pytest.approx(guard.score("You can mix").score, abs=1e-7)


def test_long_input_truncated_at_max_length(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, max_length=16)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    base = "the quick brown fox jumps over the lazy dog " * 10
    a, b = guard.score(base + "tell me a joke"), guard.score(base + "how can I hurt someone badly")
    assert a.score == pytest.approx(b.score, abs=1e-7)  # only the first 16 tokens are read
    assert guard.score("tell me a joke").score != pytest.approx(guard.score("how can I hurt someone").score, abs=1e-6)


def test_reuses_a_loaded_backbone_and_threshold(tmp_path, tiny_qwen3_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_qwen3_dir, threshold=0.3)
    backbone = load_backbone(str(tiny_qwen3_dir), device="cpu")
    guard = SirenGuard.from_pretrained(str(folder), backbone=backbone)
    assert guard.backbone is backbone and guard.default_threshold == 0.3
    assert guard.score("x", threshold=0.9).threshold == 0.9


def test_mismatched_backbone_is_a_clear_error(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "a", tiny_llama_dir, extra={"num_layers": 4, "hidden_size": 64})
    with pytest.raises(SirenError, match="hidden size 64.*has 32: wrong backbone"):
        SirenGuard.from_pretrained(str(folder), device="cpu")
    # Without our extra keys (an llm-siren folder), the neuron indices still give it away.
    folder, *_ = make_guard(tmp_path / "b", tiny_llama_dir, extra={}, neurons={1: np.array([3, 40])})
    with pytest.raises(SirenError, match="neuron 40.*hidden size is 32"):
        SirenGuard.from_pretrained(str(folder), device="cpu")
    folder, *_ = make_guard(tmp_path / "c", tiny_llama_dir, extra={}, neurons={7: np.array([3])})
    with pytest.raises(SirenError, match="layer 7 does not exist in a backbone with 4 layers"):
        SirenGuard.from_pretrained(str(folder), device="cpu")


def test_unknown_pooling_is_an_error(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["siren_module"]["pooling_type"] = "attn_max"
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(SirenError, match="pooling_type 'attn_max' is not supported"):
        SirenGuard.from_pretrained(str(folder), device="cpu")


# ---------------------------------------------------------------- siren score

def _lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_score_cli(tmp_path, tiny_llama_dir, capsys, monkeypatch):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    assert main(["score", "--model", str(folder), "tell me a joke"]) == 0
    [row] = _lines(capsys)
    assert set(row) == {"score", "is_harmful", "threshold"}
    assert row["score"] == pytest.approx(guard.score("tell me a joke").score, abs=1e-6)

    assert main(["score", "--model", str(folder), "--prompt", "p", "--response", "r", "--decision_threshold", "0"]) == 0
    [row] = _lines(capsys)
    assert row["score"] == pytest.approx(guard.score(prompt="p", response="r").score, abs=1e-6)
    assert row["is_harmful"] is True and row["threshold"] == 0.0
    # a pair also gets the prompt's verdict (this guard has no answer head: no "response")
    assert row["prompt"]["score"] == pytest.approx(guard.score("p").score, abs=1e-6) and "response" not in row

    rows = [{"text": t} for t in TEXTS] + [{"prompt": "p", "response": "r"}, {"prompt": "only a prompt"}]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(json.dumps(r) for r in rows) + "\n"))
    assert main(["score", "--model", str(folder), "--jsonl", "--batch_size", "3"]) == 0
    got = _lines(capsys)
    want = guard.score_batch(TEXTS + ["p\nr", "only a prompt"])
    np.testing.assert_allclose([g["score"] for g in got], [w.score for w in want], atol=1e-5)
    assert ["prompt" in g for g in got] == [False] * len(TEXTS) + [True, True]   # in input order

    monkeypatch.setattr("sys.stdin", io.StringIO('{"text": "a"}\n{"text": "b"}\n{"txt": "c"}\n'))
    assert main(["score", "--model", str(folder), "--jsonl"]) == 2
    assert "line 3" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO('{"text": "a"}\nnot json\n'))
    assert main(["score", "--model", str(folder), "--jsonl"]) == 2
    assert "line 2" in capsys.readouterr().err


def test_score_cli_backbone_name(tmp_path, tiny_llama_dir, capsys, monkeypatch):
    monkeypatch.setattr("siren.config.OUTPUT_ROOT", tmp_path / "train" / "probes" / "optuna")
    run = tmp_path / "train" / "probes" / "optuna" / "smollm2-135m_general"
    make_guard(run, tiny_llama_dir)
    assert main(["score", "--model", "smollm2-135m", "--dtype", "float32", "hello"]) == 0
    assert _lines(capsys)[0]["score"] == SirenGuard.from_pretrained(str(run), dtype="float32").score("hello").score
    assert main(["score", "--model", "nothing-here", "hello"]) == 2
    assert "nothing-here" in capsys.readouterr().err
    folder = tmp_path / "empty"
    folder.mkdir()
    assert main(["score", "--model", str(folder), "hello"]) == 2
    assert "not a guard folder" in capsys.readouterr().err
