"""probes.py: planted sparse signal, agreement with scikit-learn, grid selection, I/O."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from siren.pipeline.probes import LayerProbes, ProbeGrid, fit_probe_grid

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


def _objective(Z, y, w, b, C):
    m = Z @ w + b
    return np.mean(np.logaddexp(0, m) - y * m) + np.abs(w).sum() / C


def test_recovers_planted_neurons_with_exact_zeros():
    X, y = planted_data(800)
    p = LayerProbes(C=30.0).fit(X, y)
    assert p.coef_.shape == (4, 30) and p.coef_.dtype == np.float32
    assert p.intercept_.shape == (4,) and p.mean_.shape == (4, 30) and p.n_iter_.shape == (4,)
    for layer, nw in PLANTED.items():
        top = np.argsort(-np.abs(p.coef_[layer]))[:len(nw)]
        assert set(top.tolist()) == set(nw)
        for j, w in nw.items():
            assert np.sign(p.coef_[layer, j]) == np.sign(w)
        others = np.delete(p.coef_[layer], list(nw))
        assert np.mean(others == 0.0) >= 0.8, others     # exact zeros, not just small
    for layer in (0, 2):                                  # noise layers: (almost) all zero
        assert np.mean(p.coef_[layer] == 0.0) >= 0.8
    proba = p.predict_proba(X)
    assert proba.shape == (800, 4) and proba.dtype == np.float32
    assert np.mean(p.predict(X)[:, 1] == y) > 0.75      # layer 1 sees 2 of the 3 planted terms
    np.testing.assert_array_equal(p.predict(X), (p.decision_function(X) > 0).astype(int))


@pytest.mark.parametrize("C", [5.0, 50.0])
def test_matches_sklearn_on_one_layer(C):
    X, y = planted_data(400, L=2, d=12, seed=1)
    p = LayerProbes(C=C, tol=1e-7, max_iter=20000).fit(X, y)
    # standardisation: train mean / population std per neuron
    np.testing.assert_allclose(p.mean_, X.mean(axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(p.scale_, X.std(axis=0), rtol=1e-4)
    Z = ((X[:, 1] - p.mean_[1]) / p.scale_[1]).astype(np.float64)
    # sklearn minimises ||w||_1 + C_sk * sum(loss): the same problem when C_sk = C / n
    sk = LogisticRegression(l1_ratio=1.0, solver="saga", C=C / len(y), tol=1e-12,
                            max_iter=200000).fit(Z, y)
    np.testing.assert_allclose(p.coef_[1], sk.coef_[0], atol=2e-3)
    assert p.intercept_[1] == pytest.approx(sk.intercept_[0], abs=2e-3)
    np.testing.assert_array_equal(p.coef_[1] == 0, np.abs(sk.coef_[0]) < 1e-6)
    ours = _objective(Z, y, p.coef_[1].astype(np.float64), float(p.intercept_[1]), C)
    theirs = _objective(Z, y, sk.coef_[0], sk.intercept_[0], C)
    assert ours <= theirs + 1e-6
    # raw-space decision equals the standardised model
    np.testing.assert_allclose(p.decision_function(X)[:, 1],
                               Z @ p.coef_[1] + p.intercept_[1], atol=1e-4)


def test_memmap_float16_input_and_warm_start(tmp_path):
    X, y = planted_data(300, L=3, d=10, seed=2)
    path = tmp_path / "X.npy"
    np.save(path, X.astype(np.float16))
    Xm = np.load(path, mmap_mode="r")
    before = np.array(Xm)
    cold = LayerProbes(C=20.0, tol=1e-6).fit(Xm, y)
    np.testing.assert_array_equal(np.array(Xm), before)           # input untouched
    warm = LayerProbes(C=20.0, tol=1e-6).fit(Xm, y, warm_start=cold)
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=1e-3)
    assert warm.n_iter_.max() <= 3                                 # already at the optimum
    # a float32 array given directly must not be modified either (it is standardised in a copy)
    X1 = X[:, :1].copy()
    X1c = X1.copy()
    LayerProbes(C=20.0).fit(X1, y)
    np.testing.assert_array_equal(X1, X1c)


def test_fit_probe_grid_picks_best_C_per_layer():
    X, y = planted_data(600, seed=3)
    groups = np.arange(600) % 2
    tr, va = slice(0, 400), slice(400, 600)
    cs = [1000.0, 2.0, 30.0]
    grid = fit_probe_grid(X[tr], y[tr], X[va], y[va], groups[va], cs, progress=False)
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
    alone = LayerProbes(C=C1, tol=1e-6, max_iter=20000).fit(X[tr], y[tr])
    np.testing.assert_allclose(grid.coef[1], alone.coef_[1], atol=0.05)
    # round trip through plain lists
    d2 = grid.to_dict()
    import json
    back = ProbeGrid.from_dict(json.loads(json.dumps(d2)))
    np.testing.assert_array_equal(back.coef, grid.coef)
    np.testing.assert_array_equal(back.chosen_C, grid.chosen_C)
    np.testing.assert_allclose(back.decision_function(X[va]), grid.decision_function(X[va]))
