"""Levers for the category head, measured on validation rows only: which input, which factoring,
which C rule, how many rows. Reads a trained guard folder (its results.json names the feature
cache and data of its run) and the cache's all-layer pools of the category-annotating sources.

Each variant fits on the train rows and is scored on the validation rows: mean per-category AUROC
over the categories with >= 5 validation positives (the product's selection criterion) and over
those with >= 20 (the issue's bar, on validation). No test row is read.

    python experiments/categories_offline6/levers.py --guard $WORK/new
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold


def load_rows(folder: Path):
    """{split: dict(Z selected (n, k), X all layers (n, L*d), Y, M (n, C), y (n,), oof (n,), ids)} of the
    annotating sources' train and validation rows; oof: the main head's out-of-fold probability
    (its fold head that never trained on the row)."""
    from siren.artifact import load_guard_config, load_head, selection_from_config
    from siren.categories import load_taxonomy
    from siren.mlp import predict_proba_head
    from siren.pipeline.answer import main_cv_folds
    from siren.pipeline.cache import load_split
    from siren.pipeline.categories import load_targets
    from siren.pipeline.extract import ensure_features
    from siren.pipeline.head import split_ensemble
    from siren.pipeline.select import aggregate

    cfg = json.loads((folder / "results.json").read_text())["config"]
    ds = cfg["datasets"]
    kw = dict(data_dir=cfg["data_dir"], seed=cfg["seed"], val_ratio=cfg["val_ratio"], max_per_split=cfg["max_per_split"])
    paths = ensure_features(cfg["model"], ds, splits=("train", "validation"), pooling_types=[cfg["pooling_types"][0]],
                            cache_dir=cfg["cache_dir"], cached_only=True, **kw)
    _, sel, layer_w = selection_from_config(load_guard_config(folder))
    splits = {s: load_split(paths, ds, s, cfg["pooling_types"][0]) for s in ("train", "validation")}
    all_ids = np.concatenate([splits[s].ids for s in splits])
    folds = main_cv_folds(all_ids, np.concatenate([splits[s].y for s in splits]),
                          np.concatenate([splits[s].groups for s in splits]), cfg["n_folds"], cfg["seed"])
    heads = split_ensemble(load_head(folder), max(folds.values()) + 1)
    out = {}
    for s, sp in splits.items():
        w = np.ones(sp.X.shape[1], np.float32)
        for layer, v in layer_w.items():
            w[layer] = v
        Y, M = load_targets(ds, s, sp.ids, sp.groups, load_taxonomy(), kw)
        keep = np.flatnonzero(M.any(1))
        Z = aggregate(sp.X, sel, w)[keep]
        X = np.asarray(sp.X[0:len(sp.y)], dtype=np.float32)[keep]
        fold = np.array([folds[str(i)] for i in sp.ids[keep]])
        oof = np.zeros(len(keep))
        for k, head in enumerate(heads):
            oof[fold == k] = predict_proba_head(head, Z[fold == k])
        out[s] = dict(Z=Z, X=X.reshape(len(keep), -1), L=X, Y=Y[keep], M=M[keep], y=sp.y[keep], oof=oof,
                      ids=[str(i) for i in sp.ids[keep]])
    return out


def standardise(a, b):
    m, s = a.mean(0), np.maximum(a.std(0), 1e-6)
    return (a - m) / s, (b - m) / s


class Bench:
    def __init__(self, tr, va):
        self.tr, self.va = tr, va
        self.cols = [c for c in range(tr["Y"].shape[1]) if tr["Y"][tr["M"][:, c], c].sum() >= 5]

    def probes(self, Ft, Fv, C, rows=None, only=None):
        """Decision values (n_val, C): an L2 probe per category on the train rows that annotate it."""
        Yt, Mt = self.tr["Y"], self.tr["M"]
        P = np.full((len(Fv), Yt.shape[1]), np.nan)
        for c in self.cols:
            k = Mt[:, c] if rows is None else Mt[:, c] & rows
            if only is not None:
                k = k & only
            if len(np.unique(Yt[k, c])) < 2:
                k = Mt[:, c]
            P[:, c] = LogisticRegression(C=C, max_iter=3000).fit(Ft[k], Yt[k, c]).decision_function(Fv)
        return P

    def fit_each(self, make, Ft, Fv):
        """Decision values of another linear classifier (make() -> unfitted), one per category."""
        Yt, Mt = self.tr["Y"], self.tr["M"]
        P = np.full((len(Fv), Yt.shape[1]), np.nan)
        for c in self.cols:
            k = Mt[:, c]
            P[:, c] = make().fit(Ft[k], Yt[k, c]).decision_function(Fv)
        return P

    def auroc(self, P) -> tuple[float, float]:
        """Mean validation AUROC of the scores P (n_val, C) over the categories with >= 5 and >= 20
        validation positives."""
        Yv, Mv = self.va["Y"], self.va["M"]
        a5, a20 = [], []
        for c in self.cols:
            y = Yv[Mv[:, c], c]
            if y.sum() >= 5:
                a5.append(roc_auc_score(y, P[Mv[:, c], c]))
            if y.sum() >= 20:
                a20.append(roc_auc_score(y, P[Mv[:, c], c]))
        return float(np.mean(a5)), float(np.mean(a20))

    def score(self, P) -> str:
        a5, a20 = self.auroc(P)
        return f"{a5:.4f} | {a20:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guard", required=True)
    args = ap.parse_args()
    d = load_rows(Path(args.guard))
    b = Bench(d["train"], d["validation"])
    Zt, Zv = standardise(d["train"]["Z"], d["validation"]["Z"])
    print("| variant | validation AUROC (>= 5 positives) | (>= 20 positives) |\n|---|---:|---:|")
    for C in (1e-3, 3e-3):
        print(f"| product: probes on the selected neurons, C {C:g} | {b.score(b.probes(Zt, Zv, C))} |", flush=True)
    other_linear = (("shrinkage LDA (0.9)", lambda: LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.9)),
                    ("ridge classifier (alpha 1e4)", lambda: RidgeClassifier(alpha=1e4)))
    for name, make in other_linear:
        print(f"| {name} on the selected neurons | {b.score(b.fit_each(make, Zt, Zv))} |", flush=True)
    pca = PCA(64, whiten=True, random_state=0).fit(Zt)
    print(f"| PCA to 64 whitened components, then probes C 0.1 | {b.score(b.probes(pca.transform(Zt), pca.transform(Zv), 0.1))} |",
          flush=True)
    Xt, Xv = standardise(d["train"]["X"], d["validation"]["X"])
    for C in (3e-4, 1e-3, 3e-3):
        print(f"| probes on every layer's pool (all {Xt.shape[1]} dims), C {C:g} | {b.score(b.probes(Xt, Xv, C))} |", flush=True)
    del Xt, Xv
    for layer in range(0, d["train"]["L"].shape[1], 4):
        Lt, Lv = standardise(d["train"]["L"][:, layer], d["validation"]["L"][:, layer])
        print(f"| probes on layer {layer}'s pool alone, C 0.01 | {b.score(b.probes(Lt, Lv, 1e-2))} |", flush=True)
    n_layers = d["train"]["L"].shape[1]
    for C in (3e-2, 1e-1):   # one probe per layer, their decision values averaged (an ensemble, not a concatenation)
        P = sum(b.probes(*standardise(d["train"]["L"][:, layer], d["validation"]["L"][:, layer]), C)
                for layer in range(n_layers)) / n_layers
        print(f"| the mean of {n_layers} per-layer probes, C {C:g} | {b.score(P)} |", flush=True)
    harm = np.log(np.clip(d["validation"]["oof"], 1e-7, 1 - 1e-7))[:, None]
    for C in (3e-3, 1e-2):
        cond = b.probes(Zt, Zv, C, only=d["train"]["y"] == 1)
        with np.errstate(invalid="ignore"):   # untrained columns are NaN
            print(f"| P(harmful) x P(category given harmful), main head out of fold, C {C:g} "
                  f"| {b.score(harm - np.logaddexp(0, -cond))} |")
            print(f"| P(harmful) x P(category), main head out of fold, C {C:g} "
                  f"| {b.score(harm - np.logaddexp(0, -b.probes(Zt, Zv, C)))} |")
    # a C per category, chosen by 3-fold CV inside the train rows
    Yt, Mt = d["train"]["Y"], d["train"]["M"]
    P = np.full((len(Zv), Yt.shape[1]), np.nan)
    for c in b.cols:
        k = np.flatnonzero(Mt[:, c])
        y = Yt[k, c]
        cv = {C: np.zeros(len(k)) for C in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 1e-1)}
        for a, h in StratifiedKFold(3, shuffle=True, random_state=0).split(k, y):
            for C in cv:
                cv[C][h] = LogisticRegression(C=C, max_iter=3000).fit(Zt[k[a]], y[a]).decision_function(Zt[k[h]])
        best = max(cv, key=lambda C: roc_auc_score(y, cv[C]))
        P[:, c] = LogisticRegression(C=best, max_iter=3000).fit(Zt[k], y).decision_function(Zv)
    print(f"| a C per category (3-fold CV in the train rows) | {b.score(P)} |")
    rng = np.random.default_rng(0)
    for frac in (0.5, 0.75):
        print(f"| {frac:.0%} of the train rows, C 3e-3 | {b.score(b.probes(Zt, Zv, 3e-3, rows=rng.random(len(Zt)) < frac))} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
