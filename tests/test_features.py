import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from siren.features import LayerFeatures, join_prompt_response, length_batches, normalize_text
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
    lf = LayerFeatures(model, tok, max_length=5)
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


def test_length_batches_bound_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 400, size=2000)
    batches = length_batches(lengths, batch_tokens=16384, max_padding=0.1)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded / lengths.sum() <= 1.10
    for b in batches:
        assert lengths[b].max() <= 1.1 * lengths[b].min() + 1e-9 or len(b) == 1
