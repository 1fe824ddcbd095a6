"""A fold ensemble's guard folder stores each head's weights once and no zero block; it scores
exactly as the dense block-diagonal folder of earlier versions did; such older folders still load;
`export_llm_siren` writes the dense folder `llm-siren` loads, with equal scores."""

import json

import numpy as np
import pytest
import torch

from siren.artifact import (WEIGHTS_NAME, best_model_payload, export_llm_siren, folder_size, head_tensors,
                            load_best_model, load_guard_config, load_head, read_safetensors, save_best_model_pkl,
                            save_guard)
from siren.mlp import BlockDiagonalLinear, MLPHead
from siren.pipeline.head import ensemble_heads
from siren.runtime.prepack import split_block_diagonal

K, WIDTHS, RATES, INPUT = 3, [16, 8], [0.1, 0.0], 15


def fold_heads(seed=0):
    torch.manual_seed(seed)
    heads = [MLPHead(INPUT, WIDTHS, RATES) for _ in range(K)]
    with torch.no_grad():
        for h in heads:
            for p in h.parameters():
                p.mul_(3.0)   # spread the scores away from 0.5
    return [h.eval() for h in heads]


def save(folder, base, head_state, n_heads):
    rng = np.random.default_rng(0)
    selection = {l: rng.choice(32, size=5, replace=False) for l in (0, 2, 3)}
    return save_guard(folder, base_model_id=str(base), revision=None, pooling_type="residual_mean",
                      selection=selection, layer_weights={l: 1.0 for l in selection}, head_state=head_state,
                      layer_dims=[K * w for w in WIDTHS], dropout_rates=RATES, max_length=64, decision_threshold=0.5,
                      extra={"backbone": "tiny", "num_layers": 4, "hidden_size": 32}, head_ensemble=n_heads)


@pytest.fixture
def folders(tmp_path, tiny_llama_dir):
    ens = ensemble_heads(fold_heads())
    state, n = head_tensors(ens)
    new = save(tmp_path / "new", tiny_llama_dir, state, n)
    old = save(tmp_path / "old", tiny_llama_dir, ens.state_dict(), 1)   # how earlier versions wrote it
    return ens, new, old


def test_ensemble_folder_stores_each_weight_once(folders):
    ens, new, old = folders
    config = load_guard_config(new)
    assert config["siren"]["head_ensemble"] == K and config["siren"]["format_version"] == 2
    assert config["mlp"]["layer_dims"] == [K * w for w in WIDTHS]
    stored = read_safetensors(new / WEIGHTS_NAME)
    assert sorted(stored) == sorted(f"heads.{i}.network.{k}.{p}" for i in range(K) for k in (0, 3, 5)
                                    for p in ("weight", "bias"))
    heads = fold_heads()
    for i, h in enumerate(heads):
        for k, v in h.state_dict().items():
            assert torch.equal(stored[f"heads.{i}.{k}"], v), (i, k)
    n_new = sum(t.numel() for t in stored.values())
    n_old = sum(t.numel() for t in read_safetensors(old / WEIGHTS_NAME).values())
    assert n_new == sum(p.numel() for h in heads for p in h.parameters())
    # the zero blocks less the K output biases kept apart (the dense head stores their mean)
    assert n_old - n_new == K * (K - 1) * WIDTHS[0] * WIDTHS[1] - (K - 1) * 2
    assert folder_size(new)[WEIGHTS_NAME] < folder_size(old)[WEIGHTS_NAME]
    # the file is plain safetensors: the reference reader gives the same tensors
    from safetensors.torch import load_file
    assert all(torch.equal(v, stored[k]) for k, v in load_file(new / WEIGHTS_NAME).items())


def test_ensemble_scores_identical_to_the_dense_folder(folders):
    ens, new, old = folders
    x = torch.randn(9, INPUT)
    compact = load_head(new)
    dense = load_head(old)
    assert isinstance(compact.network[3], BlockDiagonalLinear) and compact.n_heads == K
    assert split_block_diagonal(dense) == 1      # what the runtime does with an old folder
    with torch.inference_mode():
        assert torch.equal(compact(x), dense(x)) and torch.equal(compact(x), ens(x))
        mean = torch.stack([h(x) for h in fold_heads()]).mean(0)
    torch.testing.assert_close(compact(x), mean, rtol=1e-5, atol=1e-5)
    # the dense layout comes back from the compact head (what an export writes)
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in compact.state_dict().items())


def test_guards_score_identically(folders):
    from siren.runtime.guard import SirenGuard

    _, new, old = folders
    texts = ["how do I make a bomb", "hello there", "a" * 80]
    a = SirenGuard.from_pretrained(str(new), device="cpu", dtype="float32")
    b = SirenGuard.from_pretrained(str(old), device="cpu", dtype="float32")
    assert [r.score for r in a.score_batch(texts)] == [r.score for r in b.score_batch(texts)]


def test_best_model_pkl_of_an_ensemble(folders):
    ens, new, _ = folders
    payload = best_model_payload(new, model="tiny", base_model={"model_id": "x"}, metrics={})
    save_best_model_pkl(new / "best_model.pkl", payload)
    assert (new / "best_model.pkl").stat().st_size < 5000 and payload["head_ensemble"] == K
    _, head = load_best_model(new / "best_model.pkl")
    x = torch.randn(4, INPUT)
    with torch.inference_mode():
        assert torch.equal(head(x), ens(x))


def test_export_llm_siren_is_dense_and_equal(folders, tmp_path):
    ens, new, old = folders
    out = export_llm_siren(new, tmp_path / "export")
    config = json.loads((out / "siren_config.json").read_text())
    assert "head_ensemble" not in config["siren"]
    assert (out / WEIGHTS_NAME).read_bytes() == (old / WEIGHTS_NAME).read_bytes()
    assert config == json.loads((old / "siren_config.json").read_text())
    siren_guard = pytest.importorskip("siren_guard")
    from siren.runtime.guard import SirenGuard

    texts = ["how do I make a bomb", "hello there", "the quick brown fox " * 5, ""]
    ours = SirenGuard.from_pretrained(str(new), device="cpu", dtype=torch.float32)
    theirs = siren_guard.SirenGuard.from_pretrained(str(out), device="cpu", dtype=torch.float32)
    try:
        a = np.array([r.score for r in ours.score_batch(texts)])
        b = np.array([r.score for r in theirs.score_batch(texts)])
    finally:
        theirs.close()
    assert np.ptp(a) > 0.01 and float(np.abs(a - b).max()) <= 1e-4


def test_siren_export_command(folders, tmp_path):
    from siren.cli import main

    _, new, old = folders
    assert main(["export", "--model", str(new), "--format", "llm_siren", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / WEIGHTS_NAME).read_bytes() == (old / WEIGHTS_NAME).read_bytes()
    assert main(["export", "--model", str(new), str(new)]) == 2     # never over the guard itself
