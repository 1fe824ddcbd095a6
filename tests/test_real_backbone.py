"""The whole path on the real offline backbone and real rows (slow: minutes on 2 CPU cores).

GGUF -> converted folder -> features -> probes -> Optuna head -> guard; then the authors'
runtime `llm-siren` loads the trained guard (its `siren export --format llm_siren` copy: a fold
ensemble is stored as its K heads, which llm-siren cannot read) and gives the same scores as ours.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from siren.cli import main as siren_main

pytestmark = pytest.mark.slow


def test_train_and_serve_smollm2_on_real_rows(data_dir, tmp_path, capsys):
    out = tmp_path / "guard"
    args = ["train", "--model", "smollm2-135m", "--datasets", "aegis", "beavertails", "--data_dir", str(data_dir),
            "--max_per_split", "24", "--n_trials", "2", "--n_folds", "2", "--max_epochs", "20", "--max_length", "128",
            "--out_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--seed", "3"]
    assert siren_main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["base_model"]["kind"] == "gguf" and results["probes"]["val_f1"]
    assert len(results["probes"]["val_f1"]) == 30 and results["n_total_neurons"] == 30 * 576
    from test_end_to_end import check_selection_against_probes
    check_selection_against_probes(out, results, json.loads((out / "siren_config.json").read_text()))

    siren_guard = pytest.importorskip("siren_guard")
    import torch

    from siren.artifact import export_llm_siren
    from siren.runtime.guard import SirenGuard

    rows = [json.loads(l) for l in open(data_dir / "beavertails" / "test.jsonl")][:12]
    ours = SirenGuard.from_pretrained(str(out), dtype="float32")
    export_llm_siren(out, tmp_path / "llm_siren")
    theirs = siren_guard.SirenGuard.from_pretrained(str(tmp_path / "llm_siren"), device="cpu", dtype=torch.float32)
    a = np.array([ours.score(prompt=r["prompt"], response=r["response"]).score for r in rows])
    b = np.array([theirs.score(prompt=r["prompt"], response=r["response"]).score for r in rows])
    print(f"largest |score difference| ours vs llm-siren on the trained smollm2 guard: {np.abs(a - b).max():.2e}")
    np.testing.assert_allclose(a, b, atol=1e-4)
