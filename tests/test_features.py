import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from siren.features import (LayerFeatures, batch_width, join_prompt_response, length_batches, normalize_text,
                             padded_width)
from siren.errors import SirenError
from tiny_models import load_base

TEXTS = ["how do I bake bread at home", "tell me a joke", "", "how can I hurt someone badly\n\n\n\nnow",
         "write a poem about the sea and the quick brown fox jumps over the lazy dog"]


def _load(folder):
    return load_base(folder), AutoTokenizer.from_pretrained(folder)


def _masked_mean(h, mask):
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


def test_normalize_text_matches_runtime_rules():
    assert normalize_text("<|im_start|>user  hi\t\tthere<|im_end|>") == "user hi there"
    assert normalize_text("a\n\n\n\nb") == "a\n\nb"
    assert normalize_text("") == " " and normalize_text("   ") == " " and normalize_text(None) == " "
    assert join_prompt_response("p", "r") == "p\nr" and join_prompt_response("p", None) == "p"


def test_residual_and_mlp_equal_direct_computation(tiny_dir):
    model, tok = _load(tiny_dir)
    lf = LayerFeatures(model, tok, pooling_types=("residual_mean", "mlp_mean"), max_length=64)
    ids = lf.tokenize(TEXTS)
    got = lf(ids)
    L = model.config.num_hidden_layers
    assert got["residual_mean"].shape == (len(TEXTS), L, model.config.hidden_size)
    # Direct: one text at a time, no padding, hidden_states[l + 1] and an MLP hook.
    for i, seq in enumerate(ids):
        captured = {}
        hooks = [model.layers[l].mlp.register_forward_hook(
            lambda m, a, o, l=l: captured.__setitem__(l, o)) for l in range(L)]
        x = torch.tensor([seq])
        with torch.no_grad():
            out = model(input_ids=x, output_hidden_states=True)
        for h in hooks:
            h.remove()
        for l in range(L):
            torch.testing.assert_close(got["residual_mean"][i, l], out.hidden_states[l + 1][0].mean(0), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got["mlp_mean"][i, l], captured[l][0].mean(0), atol=1e-5, rtol=1e-4)
    # The last layer's residual vector is post-norm: it differs from the last decoder layer's raw output.
    raw = {}
    hk = model.layers[L - 1].register_forward_hook(lambda m, a, o: raw.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids[0]]))
    hk.remove()
    assert not torch.allclose(raw["h"][0].mean(0), got["residual_mean"][0, L - 1], atol=1e-3)


def test_left_and_right_padding_identical(tiny_dir):
    model, tok = _load(tiny_dir)
    lf = LayerFeatures(model, tok, pooling_types=("residual_mean", "mlp_mean"))
    ids = lf.tokenize(TEXTS)
    right, left = lf(ids, padding_side="right"), lf(ids, padding_side="left")
    for rep in right:
        torch.testing.assert_close(right[rep], left[rep], atol=1e-5, rtol=1e-4)


def test_features_do_not_depend_on_batch_mates(tiny_llama_dir):
    model, tok = _load(tiny_llama_dir)
    lf = LayerFeatures(model, tok, pooling_types=("residual_mean",))
    ids = lf.tokenize(TEXTS)
    together = lf(ids)["residual_mean"]
    for i in range(len(ids)):
        alone = lf([ids[i]])["residual_mean"][0]
        torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=1e-4)


def test_subset_of_layers_stops_early_and_matches(tiny_llama_dir):
    model, tok = _load(tiny_llama_dir)
    full = LayerFeatures(model, tok, pooling_types=("residual_mean", "mlp_mean"))
    part = LayerFeatures(model, tok, pooling_types=("residual_mean", "mlp_mean"), layers=[2, 0])
    calls = []
    h = model.layers[3].register_forward_hook(lambda *a: calls.append(1))
    ids = full.tokenize(TEXTS)
    got = part(ids)
    h.remove()
    assert calls == []  # layer 3 never ran
    want = full(ids)
    for rep in got:
        torch.testing.assert_close(got[rep], want[rep][:, [0, 2]])


def test_truncation_and_empty_text(tiny_llama_dir):
    model, tok = _load(tiny_llama_dir)
    lf = LayerFeatures(model, tok, pooling_types=("residual_mean",), max_length=5)
    ids = lf.tokenize(["word " * 100, "", "   \n\t"])
    assert len(ids[0]) == 5 and ids[1] == ids[2] and len(ids[1]) >= 1
    out = lf(ids)["residual_mean"]
    assert torch.isfinite(out).all()


def test_length_batches_cover_all_within_budget():
    lengths = [5, 100, 3, 50, 50, 7, 1, 300]
    batches = length_batches(lengths, batch_tokens=120)
    seen = np.sort(np.concatenate(batches))
    assert (seen == np.arange(len(lengths))).all()
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 120


def test_bad_pooling_type_and_layers(tiny_llama_dir):
    model, tok = _load(tiny_llama_dir)
    with pytest.raises(SirenError, match="pooling type"):
        LayerFeatures(model, tok, pooling_types=("attn_mean",))
    with pytest.raises(SirenError, match="out of range"):
        LayerFeatures(model, tok, layers=[99])


def test_length_batches_use_few_fixed_shapes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 400, size=2000)
    batches = length_batches(lengths, batch_tokens=2048)
    assert (np.sort(np.concatenate(batches)) == np.arange(len(lengths))).all()
    shapes = set()
    for k, b in enumerate(batches):
        width = batch_width(lengths[b])
        assert lengths[b].max() <= width == padded_width(lengths[b][0])   # the batch's first text is its longest
        assert len(b) == 2048 // width or k == len(batches) - 1 or len(b) == 1
        shapes.add((len(b), width))
    assert len(shapes) <= 25                     # one shape per ladder rung (+ the tail)
    padded = sum(len(b) * batch_width(lengths[b]) for b in batches)
    assert padded / lengths.sum() < 1.25
    capped = length_batches(lengths, batch_tokens=2048, max_batch_size=8)
    assert max(len(b) for b in capped) == 8
    # fill=False (scoring a few mixed texts): one rung per batch, so padding stays within a rung step
    few = np.array([300, 12, 150, 40, 290, 9, 33, 151])
    batches = length_batches(few, batch_tokens=16384, max_batch_size=32, fill=False)
    assert (np.sort(np.concatenate(batches)) == np.arange(len(few))).all()
    for b in batches:
        assert len({padded_width(int(x)) for x in few[b]}) == 1
    assert sum(len(b) * batch_width(few[b]) for b in batches) / few.sum() < 1.2
    assert len(length_batches(few, batch_tokens=16384, max_batch_size=32)) == 1     # fill=True: one batch


def test_padded_width_ladder():
    rungs = sorted({padded_width(n) for n in range(1, 513)})
    assert rungs[:8] == [8, 16, 24, 32, 40, 48, 56, 64]
    assert all(r % 8 == 0 for r in rungs) and len(rungs) == 23
    assert all(b / a <= 1.125 + 8 / a for a, b in zip(rungs, rungs[1:]))   # about 12.5% apart
    for n in range(1, 513):
        assert n <= padded_width(n) <= max(8, n * 1.125 + 8)
    assert batch_width([37]) == 37 and batch_width([37, 5]) == padded_width(37) == 40


def test_width_padding_leaves_vectors_unchanged(tiny_llama_dir):
    model, tok = _load(tiny_llama_dir)
    lf = LayerFeatures(model, tok, pooling_types=("residual_mean", "mlp_mean"))
    ids = lf.tokenize(["a short one", "a somewhat longer text than the first one"])
    plain, padded = lf(ids), lf(ids, width=40)
    for rep in plain:
        torch.testing.assert_close(padded[rep], plain[rep], rtol=1e-5, atol=1e-5)


