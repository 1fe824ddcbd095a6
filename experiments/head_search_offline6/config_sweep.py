"""Which part of the head's search space does well on rows the search never sees?

A search of 8 trials draws 8 configurations at random from the paper's space (depth 2-3, first
width 256-2,048, later widths 64 up to the previous one, dropout 0.2-0.5 per layer, learning rate
1e-4 to 5e-3 log-uniform; ``siren.pipeline.tune.suggest_head_params``) and keeps the best on
3-fold CV. Held-out F1 then swings by about 0.03 with the draw. This script fits many such
configurations to the end (no pruning), each exactly as the search would (its 3 folds, seeds,
early stopping, layer-weight scaling, bf16 where the CPU has it), and records per configuration
its CV F1 and the held-out F1 of its fold ensemble, so the space can be judged by region.

    python config_sweep.py Z.npz --n 40 --seed 42 --out sweep_s42.json
    python config_sweep.py --summarize sweep_s42.json sweep_s0.json

    python config_sweep.py Z_other.npz --n 10 --seed 42 --out other_s42.json
    python config_sweep.py --paired sweep_s42.json other_s42.json [sweep_s0.json other_s0.json ...]
    python config_sweep.py --paired --heads 3 sweep_s42.json folds5_s42.json [...]
    python config_sweep.py --threshold_gain sweep_s42.json [sweep_s0.json ...]

``--paired`` compares two head inputs on the same configurations (the draw depends on the seed
only, not on the input): per pair of files, the configurations both hold, and over all pairs
the mean held-out and CV F1 difference (other - base) with its standard error and the number
of configurations where the other input won; then the mean over splits with the standard error
of the split means (the configurations of one split share its held-out rows, so the splits, not
the configurations, are the independent units); and, where both files record it, the mean
difference of each dataset's held-out macro-F1. Fitting the same configurations with the same
seeds on both inputs takes out most of the draw's noise, which one search per input cannot.
``--heads M`` scores each other file by the ensemble of its configurations' first M fold heads
(recorded per configuration as ``holdout_f1_first_heads``): with a ``--folds 5`` sweep as the
other file, ``--heads 3`` keeps the saved head's width of 3 folds while each head trains on 80%
of the rows. ``--balance none`` (or ``dataset_label``) fits the heads with other loss weights than training's
label-balanced ones, so two sweeps of one input compare the loss weights the same way.

Each configuration also records the decision threshold that maximises the mean macro-F1 of its
out-of-fold scores (``siren.metrics.best_threshold``, what training's ``threshold_from_cv`` picks)
and its fold ensemble's held-out F1 at that threshold; ``--threshold_gain`` prints, per file and
over files, what that threshold gains on the held-out rows against 0.5.

``--summarize`` prints, per file, the spread of held-out F1 over the configurations, the rank
correlation of CV F1 with held-out F1, held-out F1 by region of the space, and what an 8-trial
search's pick is worth: over 10,000 seeded draws of 8 of the configurations, the held-out F1 of
the one with the best CV F1 against that of one drawn at random.

Z.npz: the head's input as written by ``experiments/bench_train.py --save_aggregated`` (Z (n, k),
y (n,), g (n,) dataset index, colw (k,) layer weight per column). The held-out 20% is the same
stratified split as ``bench_train.py --holdout 0.2 --seed S``; configurations are drawn with
``numpy.random.default_rng(seed + 1)``, independently of the split. Train + validation rows only.
Write Z with ``bench_train.py --probe_holdout S`` for a sweep at ``--seed S``, so that the probes
that chose Z's columns never saw the held-out rows (the script refuses another seed); an input
written without it was chosen with most held-out rows in the probes' training rows, and its
held-out F1 reads about 0.03 high.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def draw_config(rng: np.random.Generator, low: int = 256, high: int = 2048) -> dict:
    """One configuration from the paper's space, as suggest_head_params samples it."""
    n_layers = int(rng.integers(2, 4))
    lr = float(np.exp(rng.uniform(np.log(1e-4), np.log(5e-3))))
    dims = [int(rng.integers(low // 64, high // 64 + 1)) * 64]
    for _ in range(1, n_layers):
        dims.append(int(rng.integers(1, dims[-1] // 64 + 1)) * 64)
    drops = [float(rng.uniform(0.2, 0.5)) for _ in range(n_layers)]
    return {"layer_dims": dims, "dropout_rates": drops, "lr": lr}


def ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of v (n,), ties averaged (for a Spearman correlation)."""
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    for x in np.unique(v):
        r[v == x] = r[v == x].mean()
    return r


def summarize(path: str, draws: int = 10_000, trials: int = 8) -> str:
    """The lines --summarize prints for one sweep file."""
    rows = json.load(open(path))["configs"]
    cv = np.array([r["cv_f1"] for r in rows])
    ho = np.array([r["holdout_f1"] for r in rows])
    lr = np.array([r["params"]["lr"] for r in rows])
    w0 = np.array([r["params"]["layer_dims"][0] for r in rows])
    depth = np.array([len(r["params"]["layer_dims"]) for r in rows])
    rho = float(np.corrcoef(ranks(cv), ranks(ho))[0, 1])
    rng = np.random.default_rng(0)
    picked, drawn = [], []
    for _ in range(draws):
        idx = rng.choice(len(rows), size=trials, replace=False)
        picked.append(ho[idx[np.argmax(cv[idx])]])
        drawn.append(ho[idx[0]])
    out = [f"{os.path.basename(path)}: {len(rows)} configurations",
           f"  held-out F1: mean {ho.mean():.4f}, sd {ho.std():.4f}, range {ho.min():.4f}-{ho.max():.4f}; "
           f"CV F1: mean {cv.mean():.4f}, sd {cv.std():.4f}",
           f"  Spearman(CV F1, held-out F1) = {rho:+.3f}",
           f"  held-out F1 by depth 2 / 3: {ho[depth == 2].mean():.4f} / {ho[depth == 3].mean():.4f}; "
           f"lr < / >= 5e-4: {ho[lr < 5e-4].mean():.4f} / {ho[lr >= 5e-4].mean():.4f}; "
           f"first width < / >= 1024: {ho[w0 < 1024].mean():.4f} / {ho[w0 >= 1024].mean():.4f}",
           f"  best CV of {trials}: held-out mean {np.mean(picked):.4f} (sd {np.std(picked):.4f}); "
           f"one at random: {np.mean(drawn):.4f} (sd {np.std(drawn):.4f})"]
    return "\n".join(out)


def std_err(v: np.ndarray) -> float:
    """The standard error of the mean of v (n,); nan for a single value."""
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def paired(paths: list[str], heads: int | None = None) -> str:
    """--paired's lines for [base, other, base, other, ...] sweep files. heads: score each other
    file's configurations by the held-out F1 of their first `heads` fold heads' ensemble
    (``holdout_f1_first_heads``) instead of all of them; then no per-dataset line."""
    if len(paths) < 2 or len(paths) % 2:
        raise SystemExit("--paired takes pairs of files: BASE OTHER [BASE OTHER ...]")

    def other_f1(row: dict, path: str) -> float:
        if heads is None:
            return row["holdout_f1"]
        first = row.get("holdout_f1_first_heads")
        if first is None or not 1 <= heads <= len(first):
            raise SystemExit(f"{path} records no held-out F1 of its first {heads} fold heads "
                             f"(it records {0 if first is None else len(first)}): sweep it again with this script")
        return first[heads - 1]
    d_ho, d_cv, out = [], [], []
    d_ds = []       # per configuration, other - base held-out F1 of each dataset (files that record it)
    split_ho = []   # each split's mean held-out difference: configurations of one split share its rows
    for base_path, other_path in zip(paths[::2], paths[1::2]):
        base, other = (json.load(open(p)) for p in (base_path, other_path))
        if base["seed"] != other["seed"]:
            raise SystemExit(f"{base_path} and {other_path} hold different held-out splits (seeds "
                             f"{base['seed']} and {other['seed']}): pair files of one seed")
        n = min(len(base["configs"]), len(other["configs"]))
        if n == 0:
            raise SystemExit(f"{base_path} or {other_path} holds no configuration yet: pair finished sweeps")
        for b, o in zip(base["configs"][:n], other["configs"][:n]):
            if b["params"] != o["params"]:
                raise SystemExit(f"configuration {b['i']} differs between {base_path} and {other_path}")
            d_ho.append(other_f1(o, other_path) - b["holdout_f1"])
            d_cv.append(o["cv_f1"] - b["cv_f1"])
            if heads is None and "holdout_f1_by_dataset" in b and "holdout_f1_by_dataset" in o:
                d_ds.append(np.subtract(o["holdout_f1_by_dataset"], b["holdout_f1_by_dataset"]))
        split_ho.append(np.mean(d_ho[-n:]))
        out.append(f"{os.path.basename(other_path)} - {os.path.basename(base_path)}: {n} configurations, "
                   f"held-out {np.mean(d_ho[-n:]):+.4f}, CV {np.mean(d_cv[-n:]):+.4f}")
    d_ho, d_cv = np.array(d_ho), np.array(d_cv)
    out.append(f"all {len(d_ho)}: held-out {d_ho.mean():+.4f} (se {std_err(d_ho):.4f}, other better in "
               f"{int((d_ho > 0).sum())}), CV {d_cv.mean():+.4f} (se {std_err(d_cv):.4f}, other better in {int((d_cv > 0).sum())})")
    if len(split_ho) > 1:
        # The per-configuration standard error above treats the configurations as independent, but
        # those of one split are scored on the same held-out rows; the splits are the independent units.
        split_ho = np.array(split_ho)
        out.append(f"over {len(split_ho)} splits: held-out {split_ho.mean():+.4f} (se of the split means "
                   f"{std_err(split_ho):.4f}, other better at {int((split_ho > 0).sum())} of {len(split_ho)})")
    if d_ds and len(d_ds) == len(d_ho):
        d_ds = np.array(d_ds)   # (configurations, datasets)
        out.append("held-out F1 by dataset (index in g): " + ", ".join(
            f"{k} {d_ds[:, k].mean():+.4f} (se {std_err(d_ds[:, k]):.4f})" for k in range(d_ds.shape[1])))
    return "\n".join(out)


def threshold_gain(paths: list[str]) -> str:
    """--threshold_gain's lines: held-out F1 at each configuration's out-of-fold threshold minus at 0.5,
    per file (one split) and over files, with the standard error of the split means."""
    out, split_means, n_all, better = [], [], 0, 0
    for path in paths:
        rows = [r for r in json.load(open(path))["configs"] if "holdout_f1_oof_threshold" in r]
        if not rows:
            raise SystemExit(f"{path} records no out-of-fold threshold: sweep it again with this script")
        d = np.array([r["holdout_f1_oof_threshold"] - r["holdout_f1"] for r in rows])
        thr = np.array([r["oof_threshold"] for r in rows])
        split_means.append(d.mean())
        n_all, better = n_all + len(d), better + int((d > 0).sum())
        out.append(f"{os.path.basename(path)}: {len(d)} configurations, thresholds {thr.min():.2f}-{thr.max():.2f} "
                   f"(median {np.median(thr):.2f}), held-out F1 at the threshold - at 0.5: {d.mean():+.4f}")
    m = np.array(split_means)
    out.append(f"over {len(m)} splits: {m.mean():+.4f} (se of the split means {std_err(m):.4f}, better at "
               f"{int((m > 0).sum())} of {len(m)} splits, in {better} of {n_all} configurations)")
    return "\n".join(out)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--summarize":
        for path in argv[1:]:
            print(summarize(path))
        return 0
    if argv and argv[0] == "--paired":
        if argv[1:2] == ["--heads"]:
            if len(argv) < 3 or not argv[2].isdigit():
                raise SystemExit("--paired --heads takes a number of fold heads first: --paired --heads 3 BASE OTHER ...")
            print(paired(argv[3:], heads=int(argv[2])))
        else:
            print(paired(argv[1:]))
        return 0
    if argv and argv[0] == "--threshold_gain":
        print(threshold_gain(argv[1:]))
        return 0
    from siren.pipeline.head import BALANCES   # imports torch: not needed by --summarize / --paired / --threshold_gain

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("aggregated")
    ap.add_argument("--n", type=int, default=40, help="configurations to fit")
    ap.add_argument("--seed", type=int, default=42, help="the held-out split's seed (and the draw's, + 1)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--max_epochs", type=int, default=200)
    ap.add_argument("--balance", default="label", choices=BALANCES,
                    help="the head's loss weights (fit_head's balance; training's is label)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    import torch
    from bench_train import holdout_split, probe_holdout_mismatch
    from siren.config import load
    from siren.metrics import best_threshold, macro_f1, mean_group_macro_f1
    from siren.mlp import predict_proba_head
    from siren.pipeline.head import ensemble_heads, fit_head
    from siren.pipeline.train import head_bf16
    from siren.pipeline.tune import cv_folds

    torch.manual_seed(a.seed)
    d = load("train")
    bf16 = head_bf16(d)
    data = np.load(a.aggregated)
    Z, y, g, colw = data["Z"], data["y"], data["g"], data["colw"]
    wrong = probe_holdout_mismatch(data, 0.2, a.seed)
    if wrong:
        raise SystemExit(f"{a.aggregated}: {wrong}")
    search, held = holdout_split(y, g, 0.2, a.seed)
    Zs, ys, gs = Z[search], y[search], g[search]
    folds = cv_folds(ys, gs, a.folds, a.seed)
    rng = np.random.default_rng(a.seed + 1)
    rows = []
    if os.path.exists(a.out):   # resumable: configurations already fitted are kept, the draw replayed
        done = json.load(open(a.out))
        setting = {"shape": list(Z.shape), "seed": a.seed, "folds": a.folds, "max_epochs": a.max_epochs, "bf16": bf16,
                   "balance": a.balance}
        if any(done.get(k, "label" if k == "balance" else None) != v for k, v in setting.items()):
            raise SystemExit(f"{a.out} holds a sweep of other settings ({ {k: done.get(k) for k in setting} }, "
                             f"now {setting}): give another --out")
        rows = done["configs"]
    for i in range(a.n):
        params = draw_config(rng)
        if i < len(rows):
            if rows[i]["params"] != params:
                raise SystemExit(f"{a.out} was written by another draw (configuration {i} differs): give another --out")
            continue
        t = time.perf_counter()
        heads, scores, epochs = [], [], []
        oof = np.full(len(ys), np.nan)   # each search row's score from the fold head that did not train on it
        for f, (tr, va) in enumerate(folds):
            model, hist = fit_head(Zs, ys, rows=tr, **params, seed=a.seed + i * 1000 + f,
                                   max_epochs=a.max_epochs, patience=d.patience,
                                   batch_size=d.head_batch_size, X_val=Zs, y_val=ys, groups_val=gs,
                                   val_rows=va, fused=True, bf16=bf16,
                                   column_scale=colw if d.scale_by_layer_weight else None, groups=gs,
                                   balance=a.balance)
            oof[va] = predict_proba_head(model, Zs[va])
            pred = (oof[va] >= 0.5).astype(np.int64)
            scores.append(float(mean_group_macro_f1(ys[va], pred, gs[va])))
            epochs.append(int(hist["best_epoch"]))
            heads.append(model)
        p = predict_proba_head(ensemble_heads(heads), Z[held])
        pred = (p >= 0.5).astype(np.int64)
        holdout_f1 = float(mean_group_macro_f1(y[held], pred, g[held]))
        # Held-out F1 of the ensemble of the first m fold heads, m = 1..K (the last is `holdout_f1`):
        # with K = 5 it tells more rows per head (80% against 3 folds' 67%) apart from more heads.
        first_heads = [float(mean_group_macro_f1(
            y[held], (predict_proba_head(ensemble_heads(heads[:m]), Z[held]) >= 0.5).astype(np.int64), g[held]))
            for m in range(1, len(heads))] + [holdout_f1]
        thr, _ = best_threshold(ys, oof, gs)
        row = {"i": i, "params": params, "fold_scores": scores, "cv_f1": float(np.mean(scores)),
               "best_epochs": epochs,
               "holdout_f1": holdout_f1,
               # the held-out macro-F1 of each dataset, by its index in g (the run's dataset order)
               "holdout_f1_by_dataset": [float(macro_f1(y[held][g[held] == k], pred[g[held] == k]))
                                         for k in range(int(g.max()) + 1)],
               "holdout_f1_first_heads": first_heads,
               "oof_threshold": thr,
               "holdout_f1_oof_threshold": float(mean_group_macro_f1(y[held], (p >= thr).astype(np.int64), g[held])),
               "seconds": time.perf_counter() - t}
        rows.append(row)
        tmp = a.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"aggregated": os.path.basename(a.aggregated), "shape": list(Z.shape), "seed": a.seed,
                       "folds": a.folds, "max_epochs": a.max_epochs, "bf16": bf16, "balance": a.balance,
                       "configs": rows}, fh, indent=1)
        os.replace(tmp, a.out)
        print(f"{i:3d} dims {params['layer_dims']} lr {params['lr']:.2e} drop "
              f"{[round(x, 2) for x in params['dropout_rates']]}  cv {row['cv_f1']:.4f}  "
              f"holdout {row['holdout_f1']:.4f}  {row['seconds']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
