"""select.py against hand-computed values; metrics.py against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from siren.metrics import (macro_f1, macro_f1_columns, mean_group_macro_f1,
                           mean_group_macro_f1_columns)
from siren.pipeline.select import aggregate, layer_weights, n_selected, select_neurons


def test_select_neurons_hand_computed():
    coef = np.array([
        [0.0, -4.0, 3.0, 2.0, 1.0],     # total 10: 4 -> 0.4, +3 -> 0.7, +2 -> 0.9 >= 0.9
        [0.0, 0.0, 0.0, 0.0, 0.0],      # all zero: no entry
        [5.0, 0.0, 0.0, 0.0, -5.0],     # total 10: tie -> 0.5, then 1.0
        [0.0, 0.0, 1.0, 0.0, 0.0],      # one weight: 1.0
    ])
    sel = select_neurons(coef, 0.9)
    assert sorted(sel) == [0, 2, 3]
    np.testing.assert_array_equal(sel[0], [1, 2, 3])
    np.testing.assert_array_equal(sel[2], [0, 4])
    np.testing.assert_array_equal(sel[3], [2])
    assert all(v.dtype == np.int64 for v in sel.values())
    assert n_selected(sel) == 6
    # exactly reaching the threshold stops there; 0.4 needs only the top neuron
    assert select_neurons(coef, 0.4)[0].tolist() == [1]
    assert select_neurons(coef, 0.7)[0].tolist() == [1, 2]
    # threshold 1.0 keeps every non-zero weight, none of the zeros
    assert select_neurons(coef, 1.0)[0].tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        select_neurons(coef, 0.0)


def test_layer_weights_hand_computed():
    np.testing.assert_allclose(layer_weights(np.array([0.5, 0.7, 0.9, 0.52])),
                               [0.1, 0.5, 1.0, 0.1])
    np.testing.assert_allclose(layer_weights(np.array([0.5, 0.7, 0.9]), floor=0.0),
                               [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(layer_weights(np.array([0.6, 0.6])), [1.0, 1.0])


def test_aggregate_order_and_values():
    X = np.arange(2 * 3 * 4, dtype=np.float16).reshape(2, 3, 4)   # X[i, l, j] = 12 i + 4 l + j
    sel = {2: np.array([1, 3]), 0: np.array([0, 2])}
    w = np.array([0.5, 1.0, 2.0])
    out = aggregate(X, sel, w, chunk_rows=1)
    expected = np.array([[0 * 0.5, 2 * 0.5, 9 * 2.0, 11 * 2.0],
                         [12 * 0.5, 14 * 0.5, 21 * 2.0, 23 * 2.0]], dtype=np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    half = aggregate(X, sel, w, chunk_rows=1, out_dtype=np.float16)   # training's head input from a float16 cache
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, expected.astype(np.float16))


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    P = rng.integers(0, 2, (200, 5))
    P[:, 3] = 0                      # one class never predicted
    g = rng.integers(0, 3, 200)
    g[y == 1] = np.where(g[y == 1] == 2, 1, g[y == 1])   # group 2: only class 0 present
    sk = lambda t, p: f1_score(t, p, average="macro", labels=[0, 1], zero_division=0)
    np.testing.assert_allclose(macro_f1_columns(y, P), [sk(y, P[:, j]) for j in range(5)])
    assert macro_f1(y, P[:, 0]) == pytest.approx(sk(y, P[:, 0]))
    ref = [np.mean([sk(y[g == k], P[g == k, j]) for k in range(3)]) for j in range(5)]
    np.testing.assert_allclose(mean_group_macro_f1_columns(y, P, g), ref)
    assert mean_group_macro_f1(y, P[:, 1], g) == pytest.approx(ref[1])


def test_best_threshold_maximises_mean_group_macro_f1():
    from siren.metrics import best_threshold, mean_group_macro_f1, score_thresholds

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    g = np.arange(300) % 3
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 300), 0, 1)     # harmful rows score higher
    thr, score = best_threshold(y, p, g)
    grid = np.round(np.linspace(0.05, 0.95, 91), 2)
    brute = [mean_group_macro_f1(y, (p >= t).astype(int), g) for t in grid]
    assert score == pytest.approx(max(brute)) and thr in grid
    assert mean_group_macro_f1(y, (p >= thr).astype(int), g) == pytest.approx(score)
    assert score > mean_group_macro_f1(y, (p >= 0.5).astype(int), g) - 1e-12
    # ties go to the candidate closest to 0.5
    assert best_threshold(np.array([0, 1]), np.array([0.0, 1.0]), np.array([0, 0]))[0] == 0.5
    t2, _ = best_threshold(y, p, g, grid=score_thresholds(p))
    assert t2 in np.unique(np.round(p, 4))


def test_bootstrap_macro_f1_matches_resampled_sklearn():
    from siren.metrics import bootstrap_macro_f1, percentile_interval

    rng = np.random.default_rng(1)
    y = (rng.random(120) < 0.15).astype(int)                 # skewed, like toxic_chat
    p = np.where(rng.random(120) < 0.8, y, 1 - y)            # 80% right
    reps = bootstrap_macro_f1(y, p, n_boot=200, boot_seed=7)
    idx = np.random.default_rng(7).integers(0, 120, size=(200, 120))   # the documented draws
    sk = [f1_score(y[i], p[i], average="macro", labels=[0, 1], zero_division=0) for i in idx]
    np.testing.assert_allclose(reps, sk, atol=1e-12)
    np.testing.assert_array_equal(reps, bootstrap_macro_f1(y, p, n_boot=200, boot_seed=7))   # seeded
    assert not np.array_equal(reps, bootstrap_macro_f1(y, p, n_boot=200, boot_seed=8))
    lo, hi = percentile_interval(reps)
    assert (lo, hi) == tuple(np.quantile(reps, [0.025, 0.975]))
    assert lo < macro_f1(y, p) < hi and hi - lo > 0.05        # 120 rows: a wide interval
    # all right: every replicate is 1 (both classes drawn) or 0.5 (one class only)
    assert set(np.unique(bootstrap_macro_f1(y, y, n_boot=50))) <= {0.5, 1.0}
    with pytest.raises(ValueError, match="rows"):
        bootstrap_macro_f1(y, p[:-1])
    with pytest.raises(ValueError, match="level"):
        percentile_interval(reps, level=95)
