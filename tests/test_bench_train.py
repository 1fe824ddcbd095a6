"""experiments/bench_train.py: the head's input it saves, and --max_layer's column cut."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import bench_train  # noqa: E402


def test_max_layer_keeps_exactly_the_columns_of_layers_up_to_it(tmp_path):
    full, cut = tmp_path / "full.npz", tmp_path / "cut.npz"
    assert bench_train.main(["--synthetic", "300", "6", "16", "--save_aggregated", str(full)]) == 0
    d = np.load(full)
    layer = d["layer"]
    assert layer.shape == (d["Z"].shape[1],) == d["colw"].shape
    assert np.all(np.diff(layer) >= 0)              # the runtime's order: layers ascending
    assert len(np.unique(layer)) >= 2                # the planted signal spans several layers
    max_layer = int(np.unique(layer)[0])             # keep the shallowest selected layer only
    assert bench_train.main(["--aggregated", str(full), "--max_layer", str(max_layer),
                             "--save_aggregated", str(cut)]) == 0
    c = np.load(cut)
    keep = layer <= max_layer
    assert 0 < keep.sum() < len(layer)
    np.testing.assert_array_equal(c["Z"], d["Z"][:, keep])
    np.testing.assert_array_equal(c["colw"], d["colw"][keep])
    np.testing.assert_array_equal(c["layer"], layer[keep])
    np.testing.assert_array_equal(c["y"], d["y"])
    np.testing.assert_array_equal(c["g"], d["g"])


def test_an_input_saved_without_layers_refuses_max_layer_and_saves_no_pickles(tmp_path):
    old, again = tmp_path / "old.npz", tmp_path / "again.npz"
    rng = np.random.default_rng(0)
    np.savez(old, Z=rng.standard_normal((20, 5)).astype(np.float16), y=np.arange(20) % 2, g=np.zeros(20, np.int64))
    with pytest.raises(SystemExit):
        bench_train.main(["--aggregated", str(old), "--max_layer", "1", "--save_aggregated", str(again)])
    assert bench_train.main(["--aggregated", str(old), "--save_aggregated", str(again)]) == 0
    d = np.load(again)                                # allow_pickle=False: every array is plain
    assert sorted(d.files) == ["Z", "g", "y"]
    np.testing.assert_array_equal(d["Z"], np.load(old)["Z"])


def test_head_compare_times_both_cast_paths_and_they_fit_the_same_heads(monkeypatch):
    """--variants new_plain_casts new: the same search with autocast's own casts and with the
    kept buffers; both find the same trials and the same fold heads (equal digests), and the
    module's switch is back on afterwards."""
    import siren.pipeline.head as head_mod

    rng = np.random.default_rng(0)
    Z = rng.standard_normal((240, 24)).astype(np.float32)
    y = (Z[:, 0] + 0.5 * Z[:, 1] > 0).astype(np.int64)
    g = np.arange(240) % 2
    base = {**bench_train.HEAD_VARIANTS["new"], "bf16": True, "scale": False, "width_cap": 128}
    monkeypatch.setitem(bench_train.HEAD_VARIANTS, "t_plain", {**base, "cast_buffers": False})
    monkeypatch.setitem(bench_train.HEAD_VARIANTS, "t_kept", dict(base))
    seen = []
    real = head_mod.fit_head

    def spy(*a, **kw):
        seen.append(head_mod._CAST_INTO_KEPT_BUFFERS)
        return real(*a, **kw)

    monkeypatch.setattr(head_mod, "fit_head", spy)
    import siren.pipeline.tune as tune_mod
    monkeypatch.setattr(tune_mod, "fit_head", spy)
    rows = bench_train.head_compare(Z, y, g, ["t_plain", "t_kept"], n_trials=2, n_folds=2, max_epochs=4, seed=3)
    plain, kept = rows
    assert plain["fold_heads_sha256"] == kept["fold_heads_sha256"]
    assert plain["trial_values"] == kept["trial_values"] and plain["cv_f1"] == kept["cv_f1"]
    assert False in seen and True in seen                   # each search ran with its own switch
    assert head_mod._CAST_INTO_KEPT_BUFFERS is True


def test_head_compare_extra_fold_sets_and_logreg_report_consistent_holdout_scores():
    """--extra_fold_sets 1 --logreg on a planted linear signal: the per-dataset holdout F1
    averages to the ensemble's, the extra set is the best configuration's on a new split (2K
    heads, reproducible fold scores), and the logistic regression finds the signal with the C
    that its own CV scores pick."""
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((300, 12)).astype(np.float32)
    y = (Z[:, 0] - Z[:, 1] > 0).astype(np.int64)
    g = np.arange(300) % 3
    colw = np.ones(12)
    base = {**bench_train.HEAD_VARIANTS["new"], "bf16": False, "width_cap": 256}
    bench_train.HEAD_VARIANTS["t_small"] = base
    try:
        row, again = (bench_train.head_compare(Z, y, g, ["t_small"], n_trials=2, n_folds=2, max_epochs=6, seed=5,
                                               holdout=0.25, colw=colw, extra_fold_sets=1, logreg=True)[0]
                      for _ in range(2))
    finally:
        del bench_train.HEAD_VARIANTS["t_small"]
    by_ds = row["holdout_f1_fold_ensemble_by_dataset"]
    assert sorted(by_ds) == [0, 1, 2]
    assert np.mean(list(by_ds.values())) == pytest.approx(row["holdout_f1_fold_ensemble"])
    extra, = row["holdout_f1_extra_fold_sets"]
    assert extra["sets"] == 2 and extra["heads"] == 4 and len(extra["fold_scores"]) == 2
    assert extra == again["holdout_f1_extra_fold_sets"][0]          # seeded: the same heads twice
    assert row["logreg_c"] == max(row["logreg_cv"], key=lambda c: (row["logreg_cv"][c], -c))
    assert row["holdout_f1_logreg"] > 0.85
    assert row["holdout_f1_logreg"] == again["holdout_f1_logreg"]
    assert 0.0 <= row["holdout_f1_fold_ensemble_logreg_mean"] <= 1.0


def test_logreg_reads_float16_columns_whose_float16_sums_overflow():
    """The saved head input is float16; a column near 300 over 1,000 rows sums past float16's
    65,504, so statistics taken in float16 are inf and would zero that column. The logistic
    regression must see it: the same probabilities as from the float32 copy."""
    rng = np.random.default_rng(0)
    n = 1000
    y = rng.integers(0, 2, n)
    big = 300.0 + 4.0 * y + rng.normal(0.0, 1.0, n)     # the only column that carries the label
    Z32 = np.stack([big, rng.normal(0.0, 1.0, n)], axis=1).astype(np.float32)
    Z16 = Z32.astype(np.float16)
    with np.errstate(over="ignore"):
        assert not np.isfinite(Z16.std(0)[0])           # the trap: float16's own std overflows
    colw = np.ones(2)
    p16 = bench_train.logreg_proba(Z16, y, colw, 1.0)(Z16)
    p32 = bench_train.logreg_proba(Z16.astype(np.float32), y, colw, 1.0)(Z16.astype(np.float32))
    np.testing.assert_allclose(p16, p32, atol=1e-9)
    assert np.mean((p16 >= 0.5) == y) > 0.95             # the signal column was used


def test_probe_holdout_keeps_the_held_out_rows_out_of_the_probes(tmp_path, monkeypatch):
    """--probe_holdout S: the probes see exactly the train/validation rows outside holdout_split's
    20% at seed S; the saved input records it, and a head comparison at another split is refused."""
    seen = {}
    real = bench_train.fit_probe_grid

    def spy(X_tr, y_tr, X_va, y_va, g_va, *args, **kw):
        seen.update(X_tr=np.asarray(X_tr), X_va=np.asarray(X_va))
        return real(X_tr, y_tr, X_va, y_va, g_va, *args, **kw)

    monkeypatch.setattr(bench_train, "fit_probe_grid", spy)
    out = tmp_path / "clean.npz"
    assert bench_train.main(["--synthetic", "300", "4", "16", "--probe_holdout", "5", "--save_aggregated", str(out)]) == 0
    X, y, g = bench_train.synthetic(375, 4, 16, seed=0)          # what --synthetic 300 4 16 splits 300 / 75
    _, held = bench_train.holdout_split(y, g, 0.2, 5)
    keep = np.ones(375, bool)
    keep[held] = False
    np.testing.assert_array_equal(seen["X_tr"], X[:300][keep[:300]])
    np.testing.assert_array_equal(seen["X_va"], X[300:][keep[300:]])
    d = np.load(out)
    assert d["Z"].shape[0] == 375                                  # every row still gets the head's input
    np.testing.assert_array_equal(d["probe_holdout"], [0.2, 5.0])
    with pytest.raises(SystemExit):                                # the held-out rows of seed 6 were seen
        bench_train.main(["--aggregated", str(out), "--head_compare", "--holdout", "0.2", "--seed", "6"])
    with pytest.raises(SystemExit):                                # nothing to keep out of
        bench_train.main(["--aggregated", str(out), "--probe_holdout", "5", "--save_aggregated", str(tmp_path / "x.npz")])


def test_cached_run_reads_the_guards_dtype_unless_told_another(tmp_path, monkeypatch):
    """cached_run extracts (or reads) the features in the dtype the guard recorded, and in --dtype's
    when given: the comparison of feature dtypes must not silently read the run's own features."""
    import json

    import siren.pipeline.cache as cache
    import siren.pipeline.extract as extract

    cfg = {"model": "m", "datasets": ["a"], "data_dir": "d", "seed": 0, "val_ratio": 0.2,
           "max_per_split": None, "cache_dir": "c", "batch_tokens": None, "dtype": "auto",
           "device": None, "cache_dtype": "float16", "max_length": 512}
    (tmp_path / "results.json").write_text(json.dumps({"config": cfg}))
    (tmp_path / "siren_config.json").write_text(json.dumps({"siren": {"dtype": "bfloat16"}}))
    asked = []
    monkeypatch.setattr(extract, "ensure_features", lambda *a, **kw: asked.append(kw["dtype"]) or {})
    rows = cache.Split(X=np.zeros((2, 3, 4), np.float32), y=np.array([0, 1]), groups=np.zeros(2, np.int64),
                       ids=np.array(["r0", "r1"]))
    monkeypatch.setattr(cache, "load_split", lambda *a: rows)
    bench_train.cached_run(str(tmp_path), "mlp_mean")
    bench_train.cached_run(str(tmp_path), "mlp_mean", "float32")
    (tmp_path / "siren_config.json").unlink()                      # an older run: its config's dtype
    bench_train.cached_run(str(tmp_path), "mlp_mean")
    assert asked == ["bfloat16", "float32", "auto"]
