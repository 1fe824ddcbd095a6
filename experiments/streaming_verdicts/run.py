"""The streaming-verdicts experiment's one entry point (reports/streaming_verdicts/ quotes it).

Reads pools.py's output (--pools), today's guard (--guard: its selected neurons, layer weights
and head; its eval_results.json), and its feature cache (--features: prompt-level rows' text
pools). Then:
1. CV (3 folds on train + validation response rows, stratified by dataset and label; test rows
   never): how the answer verdict is modelled (shared main head / logistic answer head, with
   prompt-level rows or not, prefix cut points and the labelling of harmful prefixes);
2. on the chosen head's out-of-fold streams: the stream rule (debounce, min answer tokens, EMA)
   and the threshold for the target false-alarm rate;
3. the final head on all train + validation rows, scored on the test rows beside today's guard
   (whole text over prompt + answer prefix, and the answer alone): finished-answer macro-F1,
   streaming false alarms, detection, tax, tokens to detection; the trade-off plot.

    python experiments/streaming_verdicts/run.py --pools WORK/pools --guard GUARD \\
        --features CACHE/smollm2-135m --out reports/streaming_verdicts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.streaming_verdicts.common import (  # noqa: E402
    DATASETS, Logistic, Pools, Projection, curve, detection_at_fa, stream_summary)
from siren.metrics import macro_f1  # noqa: E402

PROMPT_LEVEL = ("toxic_chat", "openai_moderation", "aegis", "wildguard")
TARGET_FA = 0.15


def load_split(args, proj, split: str, kinds) -> dict:
    """Both datasets' rows of one split, concatenated: Z per kind, y, group, prefix index."""
    out = {k: [] for k in kinds}
    y, g, prow, pt, rrow, rt = [], [], [], [], [], []
    offset = 0
    for gi, ds in enumerate(DATASETS):
        P = Pools.open(Path(args.pools) / ds / split)
        for k in kinds:
            out[k].append(proj(P.raw(k)))
        y.append(P.y)
        g.append(np.full(len(P.y), gi))
        prow.append(np.asarray(P.rows["pref_row"]) + offset)
        pt.append(np.asarray(P.rows["pref_t"]))
        if "resp_row" in P.rows:
            rrow.append(np.asarray(P.rows["resp_row"]) + offset)
            rt.append(np.asarray(P.rows["resp_t"]))
        offset += len(P.y)
    d = {k: np.concatenate(v) for k, v in out.items()}
    d.update(y=np.concatenate(y), g=np.concatenate(g), pref_row=np.concatenate(prow), pref_t=np.concatenate(pt))
    if rrow:
        d.update(resp_row=np.concatenate(rrow), resp_t=np.concatenate(rt))
    return d


def prompt_level_rows(args, proj) -> tuple[np.ndarray, np.ndarray]:
    """Prompt-level datasets' train + validation text pools from the guard's feature cache."""
    Z, y = [], []
    for ds in PROMPT_LEVEL:
        for split in ("train", "validation"):
            folder = Path(args.features) / ds / split / "mlp_mean"
            X = np.load(folder / "features.npy", mmap_mode="r")
            Z.append(proj(X.reshape(len(X), -1)))
            y.append(np.load(folder / "labels.npy"))
    return np.concatenate(Z), np.concatenate(y).astype(np.int64)


def streams_of(scores: np.ndarray, rows: np.ndarray, t: np.ndarray, n: int) -> list:
    """[(positions, scores)] per row from flat prefix scores."""
    order = np.argsort(rows, kind="stable")
    bounds = np.searchsorted(rows[order], np.arange(n + 1))
    return [(t[order[a:b]], scores[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]


def mean_f1(y, pred, g) -> float:
    return float(np.mean([macro_f1(y[g == i], pred[g == i]) for i in np.unique(g)]))


# ----------------------------------------------------------------- training sets of a variant

def training_set(D: dict, rows: np.ndarray, v: dict, extra) -> tuple:
    """(X, y, w) of a variant: finished answers of `rows`, their prefixes at v["cuts"] labelled
    with the answer's label, harmful prefixes weighted by v["harm"] ("same" | "ramp<T>": weight
    min(1, t/T) | "drop<T>": left out below T tokens), and optionally prompt-level rows."""
    X, y, w = [D["answer"][rows]], [D["y"][rows]], [np.ones(len(rows))]
    if v["cuts"]:
        keep = np.isin(D["pref_row"], rows) & np.isin(D["pref_t"], v["cuts"])
        t, lab = D["pref_t"][keep], D["y"][D["pref_row"][keep]]
        wt = np.ones(len(t))
        if v["harm"].startswith("ramp"):
            wt = np.where(lab == 1, np.minimum(1.0, t / float(v["harm"][4:])), 1.0)
        elif v["harm"].startswith("drop"):
            wt = np.where((lab == 1) & (t < int(v["harm"][4:])), 0.0, 1.0)
        X.append(D["answer_pref"][keep])
        y.append(lab)
        w.append(wt)
    if v.get("prompt_rows") and extra is not None:
        X.append(extra[0])
        y.append(extra[1])
        w.append(np.ones(len(extra[1])))
    w = np.concatenate(w)
    X, y = np.concatenate(X), np.concatenate(y)
    return X[w > 0], y[w > 0], w[w > 0]


def folds(y, g, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=int)
    for cell in np.unique(g * 2 + y):
        idx = rng.permutation(np.nonzero(g * 2 + y == cell)[0])
        fold[idx] = np.arange(len(idx)) % k
    return fold


def cv_variant(D: dict, v: dict, main_head, extra, k: int, seed: int) -> dict:
    """Out-of-fold finished-answer and prefix scores of a variant, and its CV metrics."""
    n = len(D["y"])
    fold = folds(D["y"], D["g"], k, seed)
    final, pref = np.zeros(n), np.zeros(len(D["pref_row"]))
    for f in range(k):
        tr, te = np.nonzero(fold != f)[0], np.nonzero(fold == f)[0]
        if v["head"] == "shared":
            model = main_head
        else:
            model = Logistic(C=v.get("C", 0.05), seed=seed).fit(*training_set(D, tr, v, extra))
        final[te] = model.proba(D["answer"][te])
        pm = np.isin(D["pref_row"], te)
        pref[pm] = model.proba(D["answer_pref"][pm])
    streams = streams_of(pref, D["pref_row"], D["pref_t"], n)
    thr, det = detection_at_fa(streams, D["y"], TARGET_FA, 1, 0, None)
    return {"cv_f1_finished": mean_f1(D["y"], (final >= 0.5).astype(int), D["g"]),
            "cv_detection_at_15fa": det, "cv_threshold_15fa": thr, "oof_final": final, "oof_pref": pref}


VARIANTS = [
    {"name": "shared (main head on the answer pool)", "head": "shared", "cuts": [], "harm": "same"},
    {"name": "answer LR, finished answers", "head": "lr", "cuts": [], "harm": "same"},
    {"name": "answer LR + prompt-level rows", "head": "lr", "cuts": [], "harm": "same", "prompt_rows": True},
    {"name": "answer LR, cuts 16/32/64, same label", "head": "lr", "cuts": [16, 32, 64], "harm": "same"},
    {"name": "answer LR, cuts 16/32/64, harmful ramp t/32", "head": "lr", "cuts": [16, 32, 64], "harm": "ramp32"},
    {"name": "answer LR, cuts 8..128, harmful ramp t/32", "head": "lr", "cuts": [8, 16, 24, 32, 48, 64, 96, 128],
     "harm": "ramp32"},
    {"name": "answer LR, cuts 8..128, harmful < 16 left out", "head": "lr", "cuts": [8, 16, 24, 32, 48, 64, 96, 128],
     "harm": "drop16"},
]


class MainHead:
    def __init__(self, head):
        self.head = head

    def proba(self, X):
        from siren.mlp import predict_proba_head

        return predict_proba_head(self.head, X).astype(np.float64)
