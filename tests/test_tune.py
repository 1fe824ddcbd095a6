"""tune.py: search space, pruning that really prunes, a study shared by two processes."""

import subprocess
import sys
import textwrap

import numpy as np
import optuna
import pytest
import torch

from siren.pipeline.tune import cv_folds, make_storage, tune_head, width_bounds


def toy(n=160, k=8, seed=0, noise=False):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, k)).astype(np.float32)
    g = np.arange(n) % 2
    y = rng.integers(0, 2, n) if noise else (X[:, 0] + g * X[:, 1] > 0).astype(np.int64)
    return X, y, g


def test_width_bounds_and_folds():
    assert width_bounds(4000) == (256, 2048)
    assert width_bounds(300) == (256, 576)
    assert width_bounds(140) == (256, 256)
    assert width_bounds(100) == (64, 192)       # 2k < 256: a lower range
    assert width_bounds(10) == (64, 64)
    X, y, g = toy(100)
    folds = cv_folds(y, g, 4, seed=0)
    held = np.concatenate([va for _, va in folds])
    assert sorted(held.tolist()) == list(range(100))          # disjoint, complete
    assert [va.tolist() for _, va in folds] == [va.tolist() for _, va in cv_folds(y, g, 4, 0)]
    with pytest.raises(ValueError):
        make_storage("study.txt")
    assert make_storage("a/b.db").startswith("sqlite:///")


def test_pruning_happens_and_result_shape():
    # pure-noise labels: the per-epoch scores are noise around 0.5, so about half of the
    # trials fall below the running median at some step and must be pruned
    X, y, g = toy(120, noise=True)
    r = tune_head(X, y, g, n_trials=8, n_folds=2, seed=0, max_epochs=6, patience=8,
                  batch_size=32, pruner_startup_trials=2, pruner_warmup_epochs=1,
                  progress=False)
    assert r.n_pruned >= 1
    assert r.n_trials_complete + r.n_pruned == 8
    assert len(r.trials) == 8
    assert set(r.best_params) == {"layer_dims", "dropout_rates", "lr"}
    assert 2 <= len(r.best_params["layer_dims"]) <= 3
    dims = r.best_params["layer_dims"]
    assert all(64 <= b <= a for a, b in zip(dims, dims[1:]))
    assert all(0.2 <= p <= 0.5 for p in r.best_params["dropout_rates"])
    assert 1e-4 <= r.best_params["lr"] <= 5e-3
    assert r.best_value == max(t["value"] for t in r.trials if t["state"] == "COMPLETE")


WORKER = textwrap.dedent("""
    import sys, json, numpy as np, torch
    torch.set_num_threads(1)
    from siren.pipeline.tune import tune_head
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 6)).astype(np.float32)
    g = np.arange(80) % 2
    y = (X[:, 0] > 0).astype(np.int64)
    r = tune_head(X, y, g, n_trials=int(sys.argv[2]), n_folds=2, seed=0, storage=sys.argv[1],
                  study_name="shared", max_epochs=3, patience=3, batch_size=40, progress=False)
    print(json.dumps({"n": len(r.trials)}))
""")


@pytest.mark.parametrize("name", ["study.db", "study.log"])
def test_two_workers_share_one_study(tmp_path, name):
    storage = str(tmp_path / name)
    n_trials = 6
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, storage, str(n_trials)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=make_storage(storage))
    trials = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                 optuna.trial.TrialState.PRUNED)]
    assert len(finished) == n_trials == len(trials)
    assert sorted(t.number for t in finished) == list(range(n_trials))
    # surplus trials (both workers asking at the same instant) are marked, never run
    for t in study.get_trials():
        if t.user_attrs.get("surplus"):
            assert t.number >= n_trials and t.state == optuna.trial.TrialState.FAIL
    # a third worker on the full study runs nothing and reports the same study
    again = tune_head(*toy(80, 6)[:1], (toy(80, 6)[0][:, 0] > 0).astype(int),
                      np.arange(80) % 2, n_trials=n_trials, n_folds=2, seed=0,
                      storage=storage, study_name="shared", progress=False)
    assert len(again.trials) == n_trials


def test_halving_prunes_on_fold_zero_only_and_keeps_best_fold_heads():
    from siren.metrics import mean_group_macro_f1
    from siren.mlp import predict_proba_head

    X, y, g = toy(120, noise=True)
    r = tune_head(X, y, g, n_trials=8, n_folds=2, seed=0, max_epochs=9, patience=9,
                  batch_size=32, pruner="halving", pruner_warmup_epochs=1, progress=False)
    assert r.n_pruned >= 1 and r.n_trials_complete + r.n_pruned == 8
    for t in r.trials:                      # a pruned trial never got past fold 0
        if t["state"] == "PRUNED":
            assert "fold_scores" not in t["user_attrs"]
    # the kept fold heads are the best trial's: each reproduces its fold's held-out score
    best = max((t for t in r.trials if t["state"] == "COMPLETE"), key=lambda t: (t["value"], -t["number"]))
    assert r.best_value == best["value"] and len(r.fold_heads) == 2
    for head, (_, va), want in zip(r.fold_heads, cv_folds(y, g, 2, 0), best["user_attrs"]["fold_scores"]):
        pred = (predict_proba_head(head, X[va]) >= 0.5).astype(np.int64)
        assert mean_group_macro_f1(y[va], pred, g[va]) == pytest.approx(want)
    assert "fold_heads" not in r.to_dict()
    with pytest.raises(ValueError):
        tune_head(X, y, g, n_trials=1, n_folds=2, seed=0, pruner="bogus", progress=False)


def test_width_cap_bounds_the_first_layer():
    assert width_bounds(4000, 512) == (256, 512)
    assert width_bounds(100, 512) == (64, 192)
    X, y, g = toy(80, k=400)
    r = tune_head(X, y, g, n_trials=3, n_folds=2, seed=0, max_epochs=2, patience=2,
                  width_cap=320, progress=False)
    assert all(256 <= t["params"]["width_0"] <= 320 for t in r.trials)


def test_fold_heads_spilled_to_disk_come_back_identical(tmp_path, monkeypatch):
    """With spill_dir, fold heads wait on disk during the search: the same search returns
    the same heads (bit for bit) as in memory, and leaves no file behind."""
    import siren.pipeline.tune as tune_mod

    X, y, g = toy(120, noise=True)
    kw = dict(n_trials=6, n_folds=2, seed=0, max_epochs=6, patience=6, batch_size=32, pruner="halving",
              pruner_warmup_epochs=1, progress=False)
    in_memory = tune_head(X, y, g, **kw)
    written, real_put = [], tune_mod._HeadFiles.put
    monkeypatch.setattr(tune_mod._HeadFiles, "put",
                        lambda self, model, name: written.append(real_put(self, model, name)) or written[-1])
    spilled = tune_head(X, y, g, spill_dir=tmp_path / "spill", **kw)
    assert written and all(str(t[0]).endswith(".safetensors") for t in written)   # heads went to disk
    assert spilled.best_value == in_memory.best_value and len(spilled.fold_heads) == len(in_memory.fold_heads) == 2
    for a, b in zip(in_memory.fold_heads, spilled.fold_heads):
        assert a.layer_dims == b.layer_dims and not b.training
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    assert list((tmp_path / "spill").iterdir()) == []       # the search's own folder is removed


def test_sampler_startup_trials_lets_tpe_guide_the_later_trials():
    X, y, g = toy(80)
    kw = dict(n_trials=4, n_folds=2, seed=0, max_epochs=2, patience=2, pruner="none", progress=False)
    random_search = tune_head(X, y, g, **kw)                       # Optuna's 10 startup trials: all random
    guided = tune_head(X, y, g, sampler_startup_trials=1, **kw)
    params = lambda r: [t["params"] for t in sorted(r.trials, key=lambda t: t["number"])]  # noqa: E731
    a, b = params(random_search), params(guided)
    assert a[0] == b[0]                     # the same seeded random first trial
    assert all(x["lr"] != z["lr"] for x, z in zip(a[1:], b[1:]))   # then TPE's picks, not the random ones


def test_float32_rows_equals_one_gather():
    from siren.pipeline.tune import _float32_rows

    X = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float16)
    rows = np.array([49, 3, 3, 17, 0, 25, 8])
    got = _float32_rows(X, rows, piece_rows=3)                 # pieces of 3, 3 and 1 rows
    assert got.dtype == np.float32 and np.array_equal(got, np.asarray(X[rows], dtype=np.float32))
    assert _float32_rows(X, rows[:0]).shape == (0, 7)


def test_weight_decay_reaches_every_fold_fit(monkeypatch):
    import siren.pipeline.tune as tune_mod

    seen, real = [], tune_mod.fit_head

    def spy(*args, **kwargs):
        seen.append(kwargs["weight_decay"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tune_mod, "fit_head", spy)
    X, y, g = toy(80)
    kw = dict(n_trials=2, n_folds=2, seed=0, max_epochs=3, patience=3, pruner="none", progress=False)
    default = tune_head(X, y, g, **kw)
    assert seen == [1e-4] * 4                        # fit_head's own default, unchanged
    seen.clear()
    strong = tune_head(X, y, g, weight_decay=0.5, **kw)
    assert seen == [0.5] * 4
    # the same draws otherwise (sampler, folds, seeds), so a different decay gives other heads
    assert [t["params"] for t in strong.trials] == [t["params"] for t in default.trials]
    assert not torch.equal(strong.fold_heads[0].network[0].weight, default.fold_heads[0].network[0].weight)
