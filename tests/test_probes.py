"""probes.py: planted sparse signal, agreement with scikit-learn, grid selection, I/O."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from siren.pipeline.probes import fit_probe_grid

PLANTED = {1: {2: 2.0, 7: -1.5}, 3: {5: 1.5}}    # layer -> {neuron: weight}


def planted_data(n, L=4, d=30, seed=0):
    """Features with heterogeneous scales and offsets; y depends on PLANTED neurons only."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.2, 20.0, (L, d))
    X = rng.standard_normal((n, L, d)) * scales + rng.normal(0, 5, (L, d))
    logit = sum(w * (X[:, l, j] - X[:, l, j].mean()) / scales[l, j]
                for l, nw in PLANTED.items() if l < L for j, w in nw.items())
    y = (logit + 0.3 * rng.standard_normal(n) > 0).astype(np.int64)
    return X.astype(np.float32), y


def fit_one(X, y, C, **kw):
    """The probes of one C: a grid of one value (its validation rows are the training rows)."""
    return fit_probe_grid(X, y, X, y, np.zeros(len(y), np.int64), [C], progress=False, **{"c_rule": "best", **kw})


def _objective(Z, y, w, b, C):
    m = Z @ w + b
    return np.mean(np.logaddexp(0, m) - y * m) + np.abs(w).sum() / C


def test_recovers_planted_neurons_with_exact_zeros():
    X, y = planted_data(800)
    p = fit_one(X, y, 30.0)
    assert p.coef.shape == (4, 30) and p.coef.dtype == np.float32
    assert p.intercept.shape == (4,) and p.mean.shape == (4, 30) and p.n_iter_by_C.shape == (1, 4)
    for layer, nw in PLANTED.items():
        top = np.argsort(-np.abs(p.coef[layer]))[:len(nw)]
        assert set(top.tolist()) == set(nw)
        for j, w in nw.items():
            assert np.sign(p.coef[layer, j]) == np.sign(w)
        others = np.delete(p.coef[layer], list(nw))
        assert np.mean(others == 0.0) >= 0.8, others     # exact zeros, not just small
    for layer in (0, 2):                                  # noise layers: (almost) all zero
        assert np.mean(p.coef[layer] == 0.0) >= 0.8
    pred = p.decision_function(X) > 0
    assert pred.shape == (800, 4)
    assert np.mean(pred[:, 1] == y) > 0.75               # layer 1 sees 2 of the 3 planted terms


@pytest.mark.parametrize("C", [5.0, 50.0])
def test_matches_sklearn_on_one_layer(C):
    X, y = planted_data(400, L=2, d=12, seed=1)
    p = fit_one(X, y, C, tol=1e-7, max_iter=20000)
    # standardisation: train mean / population std per neuron
    np.testing.assert_allclose(p.mean, X.mean(axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(p.scale, X.std(axis=0), rtol=1e-4)
    Z = ((X[:, 1] - p.mean[1]) / p.scale[1]).astype(np.float64)
    # sklearn minimises ||w||_1 + C_sk * sum(loss): the same problem when C_sk = C / n
    sk = LogisticRegression(l1_ratio=1.0, solver="saga", C=C / len(y), tol=1e-12,
                            max_iter=200000).fit(Z, y)
    np.testing.assert_allclose(p.coef[1], sk.coef_[0], atol=2e-3)
    assert p.intercept[1] == pytest.approx(sk.intercept_[0], abs=2e-3)
    np.testing.assert_array_equal(p.coef[1] == 0, np.abs(sk.coef_[0]) < 1e-6)
    ours = _objective(Z, y, p.coef[1].astype(np.float64), float(p.intercept[1]), C)
    theirs = _objective(Z, y, sk.coef_[0], sk.intercept_[0], C)
    assert ours <= theirs + 1e-6
    # raw-space decision equals the standardised model
    np.testing.assert_allclose(p.decision_function(X)[:, 1],
                               Z @ p.coef[1] + p.intercept[1], atol=1e-4)


def test_memmap_float16_input_and_warm_start(tmp_path):
    X, y = planted_data(300, L=3, d=10, seed=2)
    path = tmp_path / "X.npy"
    np.save(path, X.astype(np.float16))
    Xm = np.load(path, mmap_mode="r")
    before = np.array(Xm)
    # The same C twice: the second solve is warm-started from the first, already at the optimum.
    grid = fit_probe_grid(Xm, y, Xm, y, np.zeros(len(y), np.int64), [20.0, 20.0], tol=1e-6, c_rule="best",
                          progress=False)
    np.testing.assert_array_equal(np.array(Xm), before)           # input untouched
    assert grid.n_iter_by_C[1].max() <= 3
    np.testing.assert_allclose(grid.coef, fit_one(X, y, 20.0, tol=1e-6).coef, atol=2e-3)  # fp16 vs fp32 input
    # a float32 array given directly must not be modified either (it is standardised in a copy)
    X1 = X[:, :1].copy()
    X1c = X1.copy()
    fit_one(X1, y, 20.0)
    np.testing.assert_array_equal(X1, X1c)


def planted_grid(cs, **kw):
    """(X, y, grid): the probe grid over C values cs on 400 planted training rows, validated on 200."""
    X, y = planted_data(600, seed=3)
    groups = np.arange(600) % 2
    tr, va = slice(0, 400), slice(400, 600)
    kw = {"c_rule": "best", "refit": False, "tol": 1e-4, **kw}
    return X, y, fit_probe_grid(X[tr], y[tr], X[va], y[va], groups[va], cs, progress=False, **kw)


def test_fit_probe_grid_picks_best_C_per_layer():
    X, y, grid = planted_grid([1000.0, 2.0, 30.0])
    tr = slice(0, 400)
    L, d = 4, 30
    np.testing.assert_array_equal(grid.c_values, [2.0, 30.0, 1000.0])
    assert grid.val_f1_by_C.shape == (3, L)
    assert grid.coef.shape == (L, d) and grid.chosen_C.shape == (L,)
    best = np.argmax(grid.val_f1_by_C, axis=0)
    np.testing.assert_array_equal(grid.chosen_C, grid.c_values[best])
    np.testing.assert_allclose(grid.val_f1, grid.val_f1_by_C.max(axis=0))
    assert grid.val_f1[1] > 0.75 and grid.val_f1[3] > 0.6 and grid.val_f1[0] < grid.val_f1[1] - 0.1
    # each chosen probe equals a stand-alone fit at that C (up to solver tolerance)
    C1 = float(grid.chosen_C[1])
    alone = fit_one(X[tr], y[tr], C1, tol=1e-6, max_iter=20000)
    np.testing.assert_allclose(grid.coef[1], alone.coef[1], atol=0.05)
    # what training saves (probes_<pooling>.npz) holds the chosen probes exactly
    saved = {k: np.asarray(v) for k, v in grid.to_dict().items()}
    np.testing.assert_array_equal(saved["coef"], grid.coef)
    np.testing.assert_array_equal(saved["chosen_C"], grid.chosen_C)


def test_grid_over_stacked_memmaps_equals_concatenated(tmp_path):
    """Training fits over a RowStack of per-dataset memmaps, never one concatenated copy."""
    from siren.pipeline.cache import RowStack

    X, y = planted_data(300, L=3, d=10, seed=4)
    X = X.astype(np.float16)
    for name, part in (("a", X[:120]), ("b", X[120:])):
        np.save(tmp_path / f"{name}.npy", part)
    stacked = RowStack([np.load(tmp_path / f"{n}.npy", mmap_mode="r") for n in "ab"])
    g = np.arange(300) % 2
    a = fit_probe_grid(stacked, y, stacked, y, g, [5.0, 50.0], groups_train=g, c_rule="best", progress=False)
    b = fit_probe_grid(X, y, X, y, g, [5.0, 50.0], groups_train=g, c_rule="best", progress=False)
    for field in ("coef", "intercept", "mean", "scale", "val_f1", "train_f1", "chosen_C"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def _mean_group_f1_sklearn(y, p, g):
    from sklearn.metrics import f1_score

    return np.mean([f1_score(y[g == k], p[g == k], average="macro", labels=[0, 1], zero_division=0)
                    for k in np.unique(g)])


def test_one_se_rule_takes_the_smallest_C_within_one_bootstrap_se_of_the_best():
    """Hand-made validation predictions of three C values (smallest first) on two layers: in
    layer 0 the smallest C errs on 2 more rows than the best (inside one standard error), in
    layer 1 on 40 more (outside it), so the rule picks C 0 and the best (C 1, tied with C 2)."""
    from siren.pipeline.probes import ONE_SE_RESAMPLES, ONE_SE_SEED, one_se_choice

    rng = np.random.default_rng(1)
    n = 400
    y = rng.integers(0, 2, n)
    g = np.arange(n) % 2
    good = np.where(rng.random(n) < 0.85, y, 1 - y)            # about 85% right

    def flip(p, k):                                              # k more errors, on rows p gets right
        q = p.copy()
        q[np.flatnonzero(q == y)[:k]] ^= 1
        return q

    pred = np.zeros((3, n, 2), bool)
    pred[:, :, 0] = [flip(good, 2), good, good]
    pred[:, :, 1] = [flip(good, 40), good, good]
    f1 = np.array([[_mean_group_f1_sklearn(y, pred[i, :, l].astype(int), g) for l in range(2)] for i in range(3)])
    # the standard error as the docstring defines it: the best C's F1 over seeded resamples
    draw = np.random.default_rng(ONE_SE_SEED)
    boot = []
    for _ in range(ONE_SE_RESAMPLES):
        idx = draw.integers(0, n, n)
        boot.append([_mean_group_f1_sklearn(y[idx], pred[1, idx, l].astype(int), g[idx]) for l in range(2)])
    se = np.std(boot, axis=0)
    assert f1[1, 0] - se[0] <= f1[0, 0] < f1[1, 0]                # layer 0: C 0 within one se
    assert f1[0, 1] < f1[1, 1] - se[1]                           # layer 1: C 0 outside it
    np.testing.assert_array_equal(one_se_choice(y, pred, g), [0, 1])


def test_fit_probe_grid_one_se_rule_picks_sparser_probes_than_best():
    cs = [2.0, 30.0, 1000.0]
    _, _, best = planted_grid(cs)
    _, _, one_se = planted_grid(cs, c_rule="one_se")
    np.testing.assert_array_equal(one_se.val_f1_by_C, best.val_f1_by_C)      # the same probes
    assert np.all(one_se.chosen_C <= best.chosen_C) and np.any(one_se.chosen_C < best.chosen_C)
    i = np.searchsorted(one_se.c_values, one_se.chosen_C)
    np.testing.assert_array_equal(one_se.val_f1, one_se.val_f1_by_C[i, np.arange(4)])
    assert (np.count_nonzero(one_se.coef) < np.count_nonzero(best.coef))
    with pytest.raises(ValueError, match="c_rule must be one of"):
        planted_grid(cs, c_rule="1se")


def test_refit_fits_each_layers_chosen_C_again_on_train_and_validation_rows():
    """refit=True: C is still chosen on validation by the train-only probes (same chosen_C and F1),
    and each layer's weights are then those of a fresh fit at its chosen C on train + validation
    rows (its own standardisation), as a grid of that one C on the stacked rows gives them."""
    cs = [2.0, 30.0, 1000.0]
    X, y, plain = planted_grid(cs)
    _, _, refit = planted_grid(cs, refit=True)
    assert refit.refit and not plain.refit
    for field in ("chosen_C", "val_f1", "train_f1", "val_f1_by_C"):
        np.testing.assert_array_equal(getattr(refit, field), getattr(plain, field), err_msg=field)
    assert len(np.unique(plain.chosen_C)) >= 2                     # layers refit at different C
    np.testing.assert_allclose(refit.mean, X.mean(axis=0), rtol=1e-5, atol=1e-4)   # all 600 rows
    for c in np.unique(plain.chosen_C):
        alone = fit_one(X, y, float(c))                            # from zero, like the refit
        layers = plain.chosen_C == c
        np.testing.assert_allclose(refit.coef[layers], alone.coef[layers], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(refit.intercept[layers], alone.intercept[layers], rtol=1e-5, atol=1e-6)
    assert not np.allclose(refit.coef, plain.coef, atol=1e-3)      # more rows: other weights
