"""Neuron selection, layer weights and feature aggregation (the step between probes and head).

Reads nothing from disk, writes nothing: it turns the probes' coefficients (L, d) and
validation F1 (L,) into the selection {layer: neuron indices} and the layer weights (L,)
that the guard artifact stores, and builds the head's input (n, k) from features (n, L, d).

The aggregation order is the runtime's (``siren_guard``): selected layers in ascending
order, and within a layer the neurons in the listed (ascending) order, each multiplied by
its layer's weight. Training and serving must concatenate in the same order.
"""

from __future__ import annotations

import numpy as np

from siren.config import command_defaults
from siren.pipeline.cache import release_pages

__all__ = ["select_neurons", "layer_weights", "aggregate", "n_selected"]


def select_neurons(coef: np.ndarray, selection_threshold: float) -> dict[int, np.ndarray]:
    """Keep, per layer, the fewest neurons whose |w| sum reaches ``selection_threshold`` of the layer's.

    coef (L, d) -> {layer: ascending int64 indices}. For layer l the neurons are ranked by
    |coef[l]| (descending, ties broken by lower index first), and the smallest k with
    top-k sum >= selection_threshold * total is kept. A layer whose weights are all zero gets no
    entry. ``selection_threshold`` in (0, 1]; 1.0 keeps every non-zero weight.
    """
    coef = np.asarray(coef, dtype=np.float64)
    if coef.ndim != 2:
        raise ValueError(f"coef must be (L, d), got shape {coef.shape}")
    if not 0.0 < selection_threshold <= 1.0:
        raise ValueError(f"selection_threshold must be in (0, 1], got {selection_threshold}")
    out: dict[int, np.ndarray] = {}
    for layer, w in enumerate(np.abs(coef)):
        total = w.sum()
        if total <= 0.0:
            continue
        order = np.argsort(-w, kind="stable")           # stable: equal |w| -> lower index first
        csum = np.cumsum(w[order])
        # small relative slack so that selection_threshold=1.0 is not defeated by float round-off
        k = int(np.searchsorted(csum, selection_threshold * total * (1.0 - 1e-12), side="left")) + 1
        k = min(k, int(np.count_nonzero(w)))
        out[layer] = np.sort(order[:k]).astype(np.int64)
    return out


def n_selected(selection: dict[int, np.ndarray]) -> int:
    """Total number of selected neurons (the head's input width)."""
    return int(sum(len(v) for v in selection.values()))


def layer_weights(val_f1: np.ndarray, floor: float | None = None) -> np.ndarray:
    """Layer weights from the probes' validation F1: min-max normalised, floored (floor None:
    configs/defaults.yaml's layer_weight_floor).

    val_f1 (L,) -> (L,) float64 in [floor, 1]. If every layer scores the same, all get 1.0.
    """
    floor = command_defaults("train")["layer_weight_floor"] if floor is None else floor
    f = np.asarray(val_f1, dtype=np.float64).reshape(-1)
    lo, hi = float(f.min()), float(f.max())
    if hi - lo <= 0.0:
        return np.ones_like(f)
    return np.maximum((f - lo) / (hi - lo), floor)


def aggregate(X, selection: dict[int, np.ndarray], weights: np.ndarray,
              chunk_rows: int = 512, out_dtype=np.float32) -> np.ndarray:
    """The head's input: selected neurons of each selected layer, times the layer's weight.

    X (n, L, d) array or memmap (any float dtype); selection {layer: indices}; weights (L,)
    -> (n, k) `out_dtype` with k = total selected, layers ascending, neurons in listed order.
    Reads X in row chunks (each read once, all layers together: a (chunk_rows, L, d) block,
    18 MiB for smollm2-135m in float16) so that a memmap is never loaded whole. The product
    is taken in float32 (as the runtime does) and then stored as `out_dtype`.
    """
    layers = sorted(int(l) for l in selection)
    widths = [len(selection[l]) for l in layers]
    n = X.shape[0]
    out = np.empty((n, sum(widths)), dtype=out_dtype)
    w = np.asarray(weights, dtype=np.float64)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        rows = np.array(X[start:stop])       # (c, L, d): one read of these rows (a copy)
        release_pages(X)                     # a memmap's pages leave RSS (RowStack does it itself)
        col = 0
        for l, k in zip(layers, widths):
            idx = np.asarray(selection[l], dtype=np.int64)
            block = rows[:, l, idx].astype(np.float32)
            # fp32 product, as the runtime does (features cast to fp32, then times weight)
            out[start:stop, col:col + k] = block * np.float32(w[l])
            col += k
    return out
