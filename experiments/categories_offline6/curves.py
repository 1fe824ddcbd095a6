"""Learning curves of the category head and of the TF-IDF baseline on the same row subsets,
measured on validation rows only: would more labelled rows widen our margin over the baseline?

Both are fitted on the same random 50% / 75% / 100% of the train rows of the annotating sources
(three draws each below 100%) and scored on all validation rows: mean per-category AUROC over the
categories with >= 5 validation positives (the product's criterion) and with >= 20. Ours: the
product's probes (L2 logistic, one per category, C 0.001 as chosen) on the guard's selected
neurons; the baseline: `siren.evaluation.categories.fit_tfidf`, as `siren eval` fits it. No test
row is read.

    python experiments/categories_offline6/curves.py --guard $WORK/guard
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from levers import Bench, load_rows, standardise  # noqa: E402

FRACTIONS = (0.5, 0.75, 1.0)
DRAWS = 3
C_OURS = 1e-3


def main() -> int:
    from siren.categories import load_taxonomy
    from siren.evaluation.categories import _rows, fit_tfidf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guard", type=Path, required=True)
    args = ap.parse_args()
    d = load_rows(args.guard)
    b = Bench(d["train"], d["validation"])
    cfg = json.loads((args.guard / "results.json").read_text())["config"]
    kw = dict(data_dir=cfg["data_dir"], seed=cfg["seed"], val_ratio=cfg["val_ratio"], max_per_split=cfg["max_per_split"])
    tax = load_taxonomy()
    cols = list(range(len(tax.names)))
    text = {}
    for s in ("train", "validation"):   # the rows that annotate some category, as load_rows keeps them
        t, Y, M, _src = _rows(cfg["datasets"], s, kw, tax, cols)
        keep = M.any(1)
        text[s] = ([x for x, k in zip(t, keep) if k], Y[keep], M[keep])
    for s in text:   # the texts' rows are the feature rows, in the same order
        assert np.array_equal(text[s][1], d[s]["Y"]) and np.array_equal(text[s][2], d[s]["M"]), s
    names = [tax.names[c] for c in b.cols]
    Zt, Zv = standardise(d["train"]["Z"], d["validation"]["Z"])
    print("| train rows | ours (>= 5 / >= 20 positives) | TF-IDF (>= 5 / >= 20) | margin (>= 5 / >= 20) |\n|---|---|---|---|")
    for frac in FRACTIONS:
        ours, base = [], []
        for draw in range(DRAWS if frac < 1 else 1):
            keep = np.random.default_rng(draw).random(len(Zt)) < frac if frac < 1 else np.ones(len(Zt), bool)
            ours.append(b.auroc(b.probes(Zt, Zv, C_OURS, rows=keep)))
            t, Y, M = text["train"]
            sub = ([x for x, k in zip(t, keep) if k], Y[keep][:, b.cols], M[keep][:, b.cols])
            predict, _thr, _info = fit_tfidf(sub, (text["validation"][0], text["validation"][1][:, b.cols],
                                                   text["validation"][2][:, b.cols]), names, cfg["seed"])
            P = np.full(d["validation"]["Y"].shape, np.nan)
            P[:, b.cols] = predict(text["validation"][0])
            base.append(b.auroc(P))
        o, t = np.mean(ours, 0), np.mean(base, 0)
        print(f"| {frac:.0%} ({f'{DRAWS} draws' if frac < 1 else 'all'}) | {o[0]:.4f} / {o[1]:.4f} | {t[0]:.4f} / {t[1]:.4f} "
              f"| {o[0] - t[0]:+.4f} / {o[1] - t[1]:+.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
