"""Shared pieces of the streaming-verdicts experiment: pools on disk, projection onto a guard's
selected features, stream rules evaluated in bulk, logistic answer heads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("beavertails", "safe_rlhf")


@dataclass
class Pools:
    """One (dataset, split) of pools.py's output: float16 memmaps (m, L*d) and row info."""

    root: Path
    rows: dict
    dim: int

    @classmethod
    def open(cls, root: Path) -> "Pools":
        meta = json.loads((root / "meta.json").read_text())
        return cls(root, json.loads((root / "rows.json").read_text()), int(meta["dim"]))

    def raw(self, kind: str) -> np.ndarray:
        path = self.root / f"{kind}.f16"
        n = path.stat().st_size // (2 * self.dim)
        return np.memmap(path, dtype=np.float16, mode="r", shape=(n, self.dim))

    @property
    def y(self) -> np.ndarray:
        return np.asarray(self.rows["label"], dtype=np.int64)


class Projection:
    """A guard's head input from all-layer pools: column l*d + neuron, times the layer weight,
    in the order `SirenGuard._features_of_ids` builds it (layers ascending, neurons as listed)."""

    def __init__(self, config: dict, hidden: int):
        from siren.artifact import selection_from_config

        layers, neurons, weights = selection_from_config(config)
        self.index = np.concatenate([l * hidden + neurons[l] for l in layers])
        self.scale = np.concatenate([np.full(len(neurons[l]), weights[l], np.float32) for l in layers])

    def __call__(self, X: np.ndarray, chunk: int = 4096) -> np.ndarray:
        out = np.empty((len(X), len(self.index)), dtype=np.float32)
        for s in range(0, len(X), chunk):
            out[s:s + chunk] = np.asarray(X[s:s + chunk])[:, self.index].astype(np.float32) * self.scale
        return out


# ----------------------------------------------------------------- streams under a rule

def rule_of(threshold: float, debounce: int, min_tokens: int, ema: float | None):
    from siren.runtime.stream_rules import StreamRule

    return StreamRule(float(threshold), int(debounce), int(min_tokens), ema)


def peaks_of(streams, debounce: int, min_tokens: int, ema: float | None) -> np.ndarray:
    """Per stream the highest threshold at which the rule flags it (siren.runtime.stream_rules)."""
    from siren.runtime.stream_rules import stream_peak

    rule = rule_of(0.5, debounce, min_tokens, ema)
    return np.array([stream_peak(p, s, rule) for p, s in streams])


def flag_position(positions, scores, threshold, debounce, min_tokens, ema) -> int | None:
    """Answer tokens read when the rule stops the stream (its run's last observation), or None."""
    from siren.runtime.stream_rules import first_flag

    i = first_flag(positions, scores, rule_of(threshold, debounce, min_tokens, ema))
    return None if i is None else int(positions[i])


def threshold_for_fa(streams_safe, target: float, debounce: int, min_tokens: int, ema) -> float:
    from siren.runtime.stream_rules import threshold_for_false_alarm

    return threshold_for_false_alarm(streams_safe, rule_of(0.5, debounce, min_tokens, ema), target)


def stream_summary(streams, y: np.ndarray, final_scores: np.ndarray, threshold: float, debounce: int,
                   min_tokens: int, ema: float | None) -> dict:
    """streams: [(positions, scores)] per row; y (n,); final_scores (n,) finished answers' scores."""
    flags = [flag_position(p, s, threshold, debounce, min_tokens, ema) for p, s in streams]
    flagged = np.array([f is not None for f in flags])
    final = final_scores >= threshold
    delays = np.array([f for f, yy in zip(flags, y) if f is not None and yy == 1], dtype=float)
    fa, fa_final = float(flagged[y == 0].mean()), float(final[y == 0].mean())
    return {"threshold": threshold, "debounce": debounce, "min_answer_tokens": min_tokens, "ema": ema,
            "false_alarm": fa, "detection": float(flagged[y == 1].mean()),
            "false_alarm_finished": fa_final, "detection_finished": float(final[y == 1].mean()),
            "streaming_tax": fa - fa_final,
            "ttd_median": float(np.median(delays)) if len(delays) else None,
            "ttd_p90": float(np.percentile(delays, 90)) if len(delays) else None,
            "n_safe": int((y == 0).sum()), "n_harmful": int((y == 1).sum())}


def curve(streams, y: np.ndarray, debounce: int, min_tokens: int, ema: float | None) -> dict:
    """False alarms vs detection over thresholds: {threshold: [...], false_alarm: [...], detection: [...]}."""
    peaks = peaks_of(streams, debounce, min_tokens, ema)
    grid = np.round(np.arange(0.0, 1.0005, 0.005), 3)
    fl = peaks[None, :] >= grid[:, None]
    return {"threshold": grid.tolist(), "false_alarm": fl[:, y == 0].mean(1).tolist(),
            "detection": fl[:, y == 1].mean(1).tolist()}


def detection_at_fa(streams, y, target: float, debounce: int, min_tokens: int, ema) -> tuple[float, float]:
    """(threshold for `target` stream false alarms, detection there)."""
    thr = threshold_for_fa([s for s, yy in zip(streams, y) if yy == 0], target, debounce, min_tokens, ema)
    peaks = peaks_of([s for s, yy in zip(streams, y) if yy == 1], debounce, min_tokens, ema)
    return thr, float((peaks >= thr).mean())


# ----------------------------------------------------------------- logistic answer heads

# The product's head (siren/pipeline/answer.py): the experiment fits exactly what `siren train` fits.
from siren.pipeline.answer import LogisticHead as Logistic  # noqa: E402,F401
