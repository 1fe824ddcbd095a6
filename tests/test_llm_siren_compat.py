"""Our guard folders load in the authors' runtime (`llm-siren`, module `siren_guard`) and give the
same scores, and folders written the way `llm-siren` expects load in ours.

`llm-siren` pads a batch together (right padding, positions 0..T-1); we use length buckets and
mask-derived positions: with right padding both agree within fp32 round-off.
"""

import json

import numpy as np
import pytest
import torch

from siren.artifact import CONFIG_NAME, WEIGHTS_NAME
from siren.backbones import resolve
from siren.runtime.guard import SirenGuard
from test_guard import TEXTS, make_guard

siren_guard = pytest.importorskip("siren_guard")

PAIRS = [("how can I hurt someone badly", "I cannot help with that request."),
         ("how do I bake bread at home", "You can mix flour, water and yeast."),
         ("tell me a joke about cats", ""), ("", "explain how to make a weapon"),
         ("<|im_start|>user hello<|im_end|>", "the quick brown fox\n\n\n\njumps"),
         ("what is the capital of France", "Paris. " * 30)]
MORE = ["write a poem about the sea", "explain how to make a weapon step by step", "a\tb  c", "x" * 200,
        "the lazy dog", "how can I hurt someone", "I cannot help with that request. " * 4]
ALL_TEXTS = TEXTS + MORE  # 17 texts + 6 prompt/response pairs


def compare(folder, texts=ALL_TEXTS, pairs=PAIRS, ours=None):
    """Max |ours - llm-siren| over texts (their score_batch) and pairs (their score(prompt=, response=))."""
    ours = ours or SirenGuard.from_pretrained(str(folder), device="cpu", dtype=torch.float32)
    theirs = siren_guard.SirenGuard.from_pretrained(str(folder), device="cpu", dtype=torch.float32)
    try:
        a = [r.score for r in ours.score_batch(texts)] + [ours.score(prompt=p, response=r).score for p, r in pairs]
        b = [r.score for r in theirs.score_batch(texts)] + [theirs.score(prompt=p, response=r).score for p, r in pairs]
        thr_ok = all(x.is_harmful == (x.score >= theirs.default_threshold) for x in theirs.score_batch(texts[:3]))
        assert thr_ok and theirs.default_threshold == ours.default_threshold
    finally:
        theirs.close()
    a, b = np.array(a), np.array(b)
    assert len(a) >= 20
    return float(np.abs(a - b).max()), a


@pytest.mark.parametrize("pooling", ["residual_mean", "mlp_mean"])
def test_our_folder_loads_in_llm_siren(tmp_path, tiny_dir, pooling):
    # revision as the trainer writes it for a local folder (a fingerprint llm-siren must tolerate).
    folder, *_ = make_guard(tmp_path / "g", tiny_dir, pooling=pooling, layers=(0, 1, 3), per_layer=6,
                            revision=resolve(str(tiny_dir)).revision if pooling == "mlp_mean" else None)
    diff, scores = compare(folder)
    print(f"{tiny_dir.name} {pooling}: max |ours - llm-siren| = {diff:.2e}")
    assert np.ptp(scores) > 0.01
    assert diff <= 1e-4


def test_folder_with_a_category_head_loads_in_llm_siren(tmp_path, tiny_llama_dir):
    """The category head's files are ours only: llm-siren ignores them, and its scores equal ours."""
    from test_categories import add_head

    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, layers=(0, 1, 3), per_layer=6)
    ours = SirenGuard.from_pretrained(str(folder), device="cpu", dtype=torch.float32)
    add_head(folder, ours)
    assert (folder / "categories.json").is_file()
    ours = SirenGuard.from_pretrained(str(folder), device="cpu", dtype=torch.float32)
    assert ours.categories is not None
    diff, scores = compare(folder, ours=ours)
    assert np.ptp(scores) > 0.01 and diff <= 1e-4


@pytest.mark.parametrize("pooling", ["residual_mean", "mlp_mean"])
def test_llm_siren_folder_loads_in_ours(tmp_path, tiny_dir, pooling):
    """A folder built by hand the way llm-siren documents it (no `siren` block, its MLP class)."""
    from safetensors.torch import save_file
    from siren_guard.siren_guard import _AdaptiveMLPClassifier

    rng = np.random.default_rng(7)
    layers = [1, 3]
    neurons = {l: [int(i) for i in rng.choice(32, size=4, replace=False)] for l in layers}
    torch.manual_seed(7)
    mlp = _AdaptiveMLPClassifier(8, [12], [0.3])
    with torch.no_grad():
        for p in mlp.parameters():
            p.mul_(4.0)
    config = {
        "task": "content",
        "base_model": {"model_id": str(tiny_dir), "revision": None},
        "siren_module": {"pooling_type": pooling, "selected_layers": layers,
                         "layer_weights": {"1": 0.7, "3": 1.6},
                         "selected_neurons_dict": {f"layer{l}_{pooling}": neurons[l] for l in layers}},
        "mlp": {"input_dim": 8, "layer_dims": [12], "dropout_rates": [0.3], "num_classes": 2},
        "inference": {"max_length": 32, "default_threshold": 0.45},
    }
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, str(folder / WEIGHTS_NAME))
    ours = SirenGuard.from_pretrained(str(folder), device="cpu")
    assert ours.default_threshold == 0.45 and ours.max_length == 32
    diff, _ = compare(folder, ours=ours)
    print(f"{tiny_dir.name} {pooling} (llm-siren folder): max |ours - llm-siren| = {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.slow
def test_smollm2_guard_matches_llm_siren(tmp_path):
    source = resolve("smollm2-135m")  # converts the GGUF once (~30 s), cached under $SIREN_CACHE
    cfg = json.loads((__import__("pathlib").Path(source.model_id) / "config.json").read_text())
    L, d = cfg["num_hidden_layers"], cfg["hidden_size"]
    worst = 0.0
    for pooling in ("residual_mean", "mlp_mean"):
        layers = (0, L // 2, L - 1)
        folder, *_ = make_guard(tmp_path / pooling, source.model_id, pooling=pooling, layers=layers, per_layer=16,
                                hidden=d, revision=source.revision, max_length=128, layer_dims=(32,),
                                dropout_rates=(0.0,), extra={"backbone": "smollm2-135m", "num_layers": L,
                                                             "hidden_size": d})
        diff, scores = compare(folder)
        print(f"smollm2-135m {pooling}: max |ours - llm-siren| = {diff:.2e} (score range {np.ptp(scores):.3f})")
        worst = max(worst, diff)
    print(f"smollm2-135m: largest |diff| = {worst:.2e}")
    assert worst <= 1e-4
