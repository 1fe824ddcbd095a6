"""A training run lands all-or-nothing, and data that cannot train a guard is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import siren.pipeline.train as train_mod
from siren.cli import main as siren_main
from siren.config import defaults
from test_end_to_end import write_rows


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rows")
    write_rows(d, "aegis", "test", 40, 0)
    write_rows(d, "beavertails", "test", 40, 1)
    return d


def _args(model_dir, data_dir, out, cache, *more) -> list[str]:
    return ["train", "--model", str(model_dir), "--datasets", "aegis", "beavertails", "--data_dir", str(data_dir),
            "--out_dir", str(out), "--cache_dir", str(cache), "--n_trials", "1", "--n_folds", "2", "--max_epochs", "3",
            "--c_values", "10", "--selection_thresholds", "0.9", "--max_length", "32", "--seed", "3", *more]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_failed_run_leaves_the_earlier_run_as_it_was(tiny_llama_dir, rows, tmp_path, monkeypatch, capsys):
    out, cache = tmp_path / "guard", tmp_path / "cache"
    assert siren_main(_args(tiny_llama_dir, rows, out, cache)) == 0
    (out / "eval_results.json").write_text("{}\n")  # as if evaluated
    (out / "test_scores.jsonl").write_text("{}\n")
    before = _snapshot(out)
    assert {"siren_config.json", "best_model.pkl", "results.json", "probes_mlp_mean.npz"} <= set(before)

    # Fail after the probes stage, in a run that would also have written probes_mlp_mean.npz.
    def fail(*args, **kwargs):
        raise RuntimeError("stopped on purpose")

    monkeypatch.setattr(train_mod, "tune_candidates", fail)
    with pytest.raises(RuntimeError, match="on purpose"):
        siren_main(_args(tiny_llama_dir, rows, out, cache, "--pooling_types", "residual_mean", "mlp_mean",
                         "--seed", "4"))
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".guard.lock") == ["cache", "guard"]  # no temporary folder left

    # A run that succeeds replaces the folder's run files, and drops the earlier eval_results.json.
    monkeypatch.undo()
    assert siren_main(_args(tiny_llama_dir, rows, out, cache, "--seed", "4")) == 0
    assert not (out / "eval_results.json").exists() and not (out / "test_scores.jsonl").exists()
    assert json.loads((out / "results.json").read_text())["config"]["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".guard.lock") == ["cache", "guard"]


def test_single_class_training_data_is_a_clear_error(tiny_llama_dir, tmp_path, capsys):
    d = tmp_path / "rows"
    write_rows(d, "aegis", "test", 30, 0, harmful_only=True)
    assert siren_main(_args(tiny_llama_dir, d, tmp_path / "o", tmp_path / "c", "--datasets", "aegis")) == 2
    err = capsys.readouterr().err
    assert "training rows are all harmful" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_probe_grid_selecting_no_neuron_is_a_clear_error(tiny_llama_dir, rows, tmp_path, capsys):
    # C this small makes the L1 penalty zero out every weight of every layer.
    args = _args(tiny_llama_dir, rows, tmp_path / "o", tmp_path / "c")
    args[args.index("--c_values") + 1] = "1e-6"
    assert siren_main(args) == 2
    err = capsys.readouterr().err
    assert "no neuron is selected" in err and "C_VALUES" in err
    assert not (tmp_path / "o").exists()


def test_fold_ensemble_head_with_layer_scale_is_what_the_guard_serves(tiny_llama_dir, rows, tmp_path, capsys):
    """final_head=ensemble saves the mean of the CV fold heads (n_folds x the width, no refit),
    with the layer-weight scale folded in and the threshold chosen on the out-of-fold scores;
    the saved guard reproduces the run's test F1 at that threshold."""
    import numpy as np

    from siren.metrics import macro_f1
    from siren.runtime.guard import SirenGuard

    out, cache = tmp_path / "guard", tmp_path / "cache"
    assert siren_main(_args(tiny_llama_dir, rows, out, cache, "--final_head", "ensemble", "--scale_by_layer_weight",
                            "--pruner", "halving", "--head_dtype", "bfloat16", "--n_trials", "2",
                            "--threshold_from_cv")) == 0
    res = json.loads((out / "results.json").read_text())
    chosen = res["chosen"]
    assert chosen["final_head"] == "ensemble" and res["config"]["scale_by_layer_weight"] is True
    assert chosen["saved_layer_dims"] == [2 * w for w in chosen["head"]["layer_dims"]]
    assert res["final_head_train_loss"] == []                      # nothing was trained after the search
    cfg = json.loads((out / "siren_config.json").read_text())
    assert cfg["mlp"]["layer_dims"] == chosen["saved_layer_dims"]
    assert res["decision_threshold_source"] == "cv"
    guard = SirenGuard.from_pretrained(str(out), dtype="float32")
    assert guard.score_batch(["x"])[0].threshold == pytest.approx(res["decision_threshold"])
    splits = json.loads((out / "splits.json").read_text())
    for name in ("aegis", "beavertails"):
        test_ids = set(splits[name]["test"])
        lines = [json.loads(x) for x in (rows / name / "test.jsonl").read_text().splitlines()]
        lines = [r for r in lines if r["id"] in test_ids]
        assert len(lines) == len(test_ids) > 0
        pred = np.array([r.is_harmful for r in guard.score_batch([r["text"] for r in lines])], dtype=np.int64)
        y = np.array([int(r["label"]) for r in lines])
        assert macro_f1(y, pred) == pytest.approx(res["test_f1"][name], abs=1e-9)


def test_cold_run_extracts_in_a_child_process(tiny_llama_dir, rows, tmp_path, monkeypatch):
    """The backbone is loaded only in the extraction child: the training process itself would
    fail if it loaded it. With the caches finished, no child is started (nothing is missing)."""
    import siren.backbones
    import siren.pipeline.extract as extract_mod

    def refuse(*args, **kwargs):
        raise AssertionError("the training process loaded the backbone")

    monkeypatch.setattr(siren.backbones, "load_backbone", refuse)
    out, cache = tmp_path / "guard", tmp_path / "cache"
    assert siren_main(_args(tiny_llama_dir, rows, out, cache)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["timings_s"]["extract"] > 0 and results["test_f1"]
    kw = dict(pooling_types=["mlp_mean"], cache_dir=cache, data_dir=rows, seed=3, max_length=32, cached_only=True)
    entries = extract_mod.ensure_features(str(tiny_llama_dir), ["aegis", "beavertails"], **kw)
    assert len(entries) == 6 and {e.status for e in entries.values()} == {"cached"}
    assert {e.status for e in extract_mod.ensure_features(str(tiny_llama_dir), ["aegis", "beavertails"],
                                                          **{**kw, "cache_dir": tmp_path / "empty"}).values()} == {"missing"}
    import concurrent.futures

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", refuse)    # a warm run starts no child
    assert siren_main(_args(tiny_llama_dir, rows, tmp_path / "again", cache)) == 0


def test_probe_settings_reach_the_probes(tiny_llama_dir, rows, tmp_path, monkeypatch):
    """PROBE_TOL (--probe_tol) is the probes' stopping tolerance, PROBE_C_RULE (--probe_c_rule)
    how each layer's C is picked and PROBE_REFIT (--probe_refit) whether the chosen probes are fitted
    again on train+validation; unset, configs/defaults.yaml's."""
    import siren.pipeline.probes as probes_mod

    seen = []
    real = probes_mod.fit_probe_grid

    def spy(*args, **kwargs):
        seen.append((kwargs.get("tol"), kwargs.get("c_rule"), kwargs.get("refit")))
        return real(*args, **kwargs)

    monkeypatch.setattr(probes_mod, "fit_probe_grid", spy)
    cache = tmp_path / "c"
    assert siren_main(_args(tiny_llama_dir, rows, tmp_path / "a", cache)) == 0
    refit = defaults()["probe_refit"]
    assert siren_main(_args(tiny_llama_dir, rows, tmp_path / "b", cache, "--probe_tol", "1e-7",
                            "--probe_c_rule", "best", "--no_probe_refit" if refit else "--probe_refit")) == 0
    assert seen == [(1e-4, "one_se", refit), (1e-7, "best", not refit)]
    config = json.loads((tmp_path / "b" / "results.json").read_text())["config"]
    assert config["probe_tol"] == 1e-7 and config["probe_c_rule"] == "best" and config["probe_refit"] is (not refit)
    # a tighter tolerance takes more iterations on the same rows (the spy passed it through)
    iters = [np.load(tmp_path / run / "probes_mlp_mean.npz")["n_iter_by_C"].sum() for run in ("a", "b")]
    assert iters[1] > iters[0]
