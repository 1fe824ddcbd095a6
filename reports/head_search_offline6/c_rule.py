"""The head's input with the probes' C chosen per layer by another rule (an experiment, not training).

Training keeps, per layer, the C of the grid whose probe has the best validation F1
(``siren.pipeline.probes.fit_probe_grid``). This script fits the same grid, the same way (the
same call, warm starts and tolerance), keeps every C's probes, and picks per layer by one of:

- ``best``: training's rule (the output equals ``scripts/bench_train.py --save_aggregated``'s);
- ``one_se``: the sparsest (smallest) C whose validation F1 is at least the best's minus one
  standard error of the best's F1, the standard error taken over ``--boot`` seeded bootstrap
  resamples of the validation rows (glmnet's "1se" rule).

Then, as training does: selection at 0.9 of each chosen probe's |w|, layer weights from the
chosen probes' validation F1, the head's input over the train + validation rows, written in
``bench_train.py --save_aggregated``'s format for ``config_sweep.py``:

    python c_rule.py <a training run> --rule one_se --out Z_1se.npz
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a training output folder whose features are in the cache")
    ap.add_argument("--pooling_type", default="mlp_mean")
    ap.add_argument("--rule", choices=("best", "one_se"), required=True)
    ap.add_argument("--boot", type=int, default=200, help="bootstrap resamples for one_se")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    import siren.pipeline.probes as probes
    from bench_train import cached_run
    from siren.config import defaults
    from siren.metrics import mean_group_macro_f1_columns
    from siren.pipeline.select import aggregate, layer_weights, select_neurons

    d = defaults()
    (Xt, yt, gt), (Xv, yv, gv) = cached_run(a.run, a.pooling_type)
    n, L, dim = Xt.shape
    if len(probes._layer_chunks(n, L, dim)) != 1:
        raise SystemExit("this script records one chunk of layers; these features need several")
    solved = []                 # (w, b) per C, smallest C first: fit_probe_grid's order
    fista = probes._fista

    def recording_fista(*args, **kwargs):
        w, b, it = fista(*args, **kwargs)
        solved.append((w.cpu().numpy(), b.cpu().numpy()))
        return w, b, it

    probes._fista = recording_fista
    try:
        grid = probes.fit_probe_grid(Xt, yt, Xv, yv, gv, d["c_values"], groups_train=gt,
                                     tol=float(d["probe_tol"]), progress=False)
    finally:
        probes._fista = fista
    cs = grid.c_values
    preds = np.stack([probes._decision(Xv, w, b, grid.mean, grid.scale) > 0 for w, b in solved])  # (m, nv, L)
    f1 = np.stack([mean_group_macro_f1_columns(yv, p, gv) for p in preds])                       # (m, L)
    np.testing.assert_array_equal(f1, grid.val_f1_by_C)   # the recorded probes are the grid's
    best = np.argmax(f1, axis=0)
    if a.rule == "best":
        pick = best
    else:
        rng = np.random.default_rng(0)
        boot = np.zeros((a.boot, len(cs), L))
        for r in range(a.boot):
            idx = rng.integers(0, len(yv), len(yv))
            for i in range(len(cs)):
                boot[r, i] = mean_group_macro_f1_columns(yv[idx], preds[i][idx], gv[idx])
        se = boot.std(axis=0)                                                    # (m, L)
        cols = np.arange(L)
        floor = f1[best, cols] - se[best, cols]
        pick = np.array([min(i for i in range(len(cs)) if f1[i, l] >= floor[l]) for l in cols])
        print(f"bootstrap se of the best probes' validation F1: median {np.median(se[best, cols]):.4f}")
    coef = np.stack([solved[pick[l]][0][l] for l in range(L)])
    val_f1 = f1[pick, np.arange(L)]
    sel, w = select_neurons(coef, float(d["selection_thresholds"][0])), layer_weights(val_f1, d["layer_weight_floor"])
    Z = np.concatenate([aggregate(Xt, sel, w), aggregate(Xv, sel, w)])
    colw = np.concatenate([np.full(len(sel[l]), w[l]) for l in sorted(sel)])
    layer = np.concatenate([np.full(len(sel[l]), l) for l in sorted(sel)])
    np.savez(a.out, Z=Z.astype(np.float16), y=np.concatenate([yt, yv]), g=np.concatenate([gt, gv]),
             colw=colw, layer=layer)
    counts = {f"{c:g}": int((pick == i).sum()) for i, c in enumerate(cs)}
    print(f"rule {a.rule}: layers per C {counts}; {Z.shape[1]} neurons; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
