"""Classification metrics used to select probes, tune the head and report results.

Reads nothing from disk, writes nothing. The paper's metric is macro-F1 (over the two
classes 0 = safe, 1 = harmful) computed per dataset and averaged over datasets; here a
"group" is a dataset index.

All functions agree with ``sklearn.metrics.f1_score(y, p, average="macro", labels=[0, 1],
zero_division=0)`` per group (a class with no true and no predicted rows scores 0), but are
written in numpy so that many prediction columns (e.g. one per layer) are scored at once.
"""

from __future__ import annotations

import numpy as np

__all__ = ["macro_f1", "macro_f1_columns", "mean_group_macro_f1", "mean_group_macro_f1_columns",
           "bootstrap_macro_f1", "percentile_interval"]


def _as_pred_matrix(y_pred: np.ndarray) -> np.ndarray:
    p = np.asarray(y_pred)
    if p.ndim == 1:
        p = p[:, None]
    return p.astype(bool, copy=False) if p.dtype == bool else (p != 0)


def macro_f1_columns(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Macro-F1 over labels [0, 1] for each column of predictions.

    y_true (n,) in {0, 1}; y_pred (n, m) in {0, 1} (or bool) -> (m,) float64.
    """
    t = np.asarray(y_true).reshape(-1) != 0
    p = _as_pred_matrix(y_pred)
    if p.shape[0] != t.shape[0]:
        raise ValueError(f"y_true has {t.shape[0]} rows, y_pred has {p.shape[0]}")
    n = t.shape[0]
    n_pos_true = int(t.sum())
    tp = p[t].sum(axis=0).astype(np.float64)          # predicted 1, true 1
    n_pos_pred = p.sum(axis=0).astype(np.float64)
    fp = n_pos_pred - tp
    fn = n_pos_true - tp
    tn = (n - n_pos_true) - fp                        # predicted 0, true 0
    return _macro_f1_of_counts(tp, fp, fn, tn)


def _macro_f1_of_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """Macro-F1 over labels [0, 1] from confusion counts (m,) float64 each -> (m,); zero_division=0."""
    # class 1: 2tp / (2tp + fp + fn); class 0 swaps roles (its tp is tn, fp <-> fn)
    den1 = 2 * tp + fp + fn
    den0 = 2 * tn + fn + fp
    f1_1 = np.divide(2 * tp, den1, out=np.zeros_like(tp), where=den1 > 0)
    f1_0 = np.divide(2 * tn, den0, out=np.zeros_like(tn), where=den0 > 0)
    return (f1_0 + f1_1) / 2


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over labels [0, 1] (zero_division=0). y_true, y_pred (n,) -> float."""
    return float(macro_f1_columns(y_true, np.asarray(y_pred).reshape(-1))[0])


def mean_group_macro_f1_columns(y_true: np.ndarray, y_pred: np.ndarray,
                                groups: np.ndarray) -> np.ndarray:
    """Per-group macro-F1, averaged over groups, for each column.

    y_true (n,), y_pred (n, m) or (n,), groups (n,) int -> (m,) float64. Every group present
    counts once, whatever its size (a group with one class present still gets macro-F1 over
    [0, 1] with zero_division=0, as scikit-learn computes it).
    """
    t = np.asarray(y_true).reshape(-1)
    p = _as_pred_matrix(y_pred)
    g = np.asarray(groups).reshape(-1)
    if not (t.shape[0] == p.shape[0] == g.shape[0]):
        raise ValueError(f"row counts differ: y_true {t.shape[0]}, y_pred {p.shape[0]}, "
                         f"groups {g.shape[0]}")
    if t.shape[0] == 0:
        raise ValueError("no rows to score")
    scores = [macro_f1_columns(t[g == k], p[g == k]) for k in np.unique(g)]
    return np.mean(scores, axis=0)


def mean_group_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray) -> float:
    """The paper's metric: macro-F1 per dataset, averaged over datasets. (n,) x3 -> float."""
    return float(mean_group_macro_f1_columns(y_true, np.asarray(y_pred).reshape(-1), groups)[0])


def best_threshold(y_true: np.ndarray, proba: np.ndarray, groups: np.ndarray,
                   grid: np.ndarray | None = None) -> tuple[float, float]:
    """The decision threshold that maximises mean_group_macro_f1 of ``proba >= t``.

    y_true, proba, groups (n,); grid: candidate thresholds (default 0.05, 0.06, ..., 0.95).
    Ties go to the candidate closest to 0.5. Returns (threshold, score). Meant for
    out-of-fold (cross-validation) scores, never for test rows.
    """
    grid = np.round(np.linspace(0.05, 0.95, 91), 2) if grid is None else np.asarray(grid, dtype=np.float64)
    p = np.asarray(proba, dtype=np.float64).reshape(-1)
    scores = mean_group_macro_f1_columns(y_true, p[:, None] >= grid[None, :], groups)
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    i = best[np.argmin(np.abs(grid[best] - 0.5))]
    return float(grid[i]), float(scores[i])


def score_thresholds(proba: np.ndarray, max_candidates: int = 513) -> np.ndarray:
    """Candidate thresholds at the scores themselves (rounded to 1e-4), or at most
    ``max_candidates`` quantiles of them."""
    p = np.asarray(proba, dtype=np.float64).reshape(-1)
    candidates = np.unique(np.round(p, 4))
    if len(candidates) > max_candidates:
        candidates = np.quantile(p, np.linspace(0.0, 1.0, max_candidates))
    return candidates


def bootstrap_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_boot: int = 1000,
                       boot_seed: int = 0) -> np.ndarray:
    """Macro-F1 of ``n_boot`` bootstrap resamples of the rows. (n,), (n,) -> (n_boot,) float64.

    Replicate b scores the rows ``rng.integers(0, n, size=(n_boot, n))[b]`` with
    ``rng = np.random.default_rng(boot_seed)`` (rows drawn with replacement, n of them), so a seed
    gives the same replicates. Why: a test set of a few hundred rows (toxic_chat's 300 hold
    about 21 harmful ones) moves macro-F1 by several points when a few rows change, and a
    difference between two guards is only worth reporting beside that spread.
    """
    t = np.asarray(y_true).reshape(-1) != 0
    p = np.asarray(y_pred).reshape(-1) != 0
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape[0]} rows, y_pred has {p.shape[0]}")
    n = t.shape[0]
    if n == 0:
        raise ValueError("no rows to score")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    idx = np.random.default_rng(boot_seed).integers(0, n, size=(n_boot, n))
    tb, pb = t[idx], p[idx]                                 # (n_boot, n) each
    tp = (tb & pb).sum(axis=1).astype(np.float64)
    fp = (~tb & pb).sum(axis=1).astype(np.float64)
    fn = (tb & ~pb).sum(axis=1).astype(np.float64)
    return _macro_f1_of_counts(tp, fp, fn, n - tp - fp - fn)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates (m,) -> (low, high)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    r = np.asarray(replicates, dtype=np.float64).reshape(-1)
    lo, hi = np.quantile(r, [(1.0 - level) / 2, (1.0 + level) / 2])
    return float(lo), float(hi)
