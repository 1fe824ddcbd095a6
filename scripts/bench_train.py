"""Benchmark the training stages after extraction: probes (ours vs reference-style) and head.

Reads the cached features of a finished training run (``--run DIR``: its results.json names
the backbone, datasets, splits and cache; nothing is re-extracted when the cache is valid), or
generates planted-sparse data (``--synthetic n L d``); writes JSON to stdout (and to ``--out``
if given) plus a small table.

Reference-style probe (the original authors' way): one model per layer and per C, Adam on
raw (unstandardised) features, full batch, loss = mean BCE + ||w||_1 / C (subgradient), up
to 500 epochs, early stop when the validation loss has not improved for 10 epochs (best
state restored). Ours: ``siren.pipeline.probes.fit_probe_grid`` (FISTA, all layers at once,
warm-started over C). Both pick, per layer, the C with the best validation
mean-over-datasets macro-F1; the table reports mean/max of that over layers, time, and
how many weights are exactly zero.

Usage: python scripts/bench_train.py --run train/probes/optuna/smollm2-135m_general [--trials 3] [--out b.json]
       python scripts/bench_train.py --synthetic 2000 16 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from siren.metrics import mean_group_macro_f1_columns
from siren.pipeline.probes import fit_probe_grid
from siren.pipeline.select import aggregate, layer_weights, n_selected, select_neurons


def synthetic(n: int, L: int, d: int, seed: int = 0, n_groups: int = 3):
    """Planted-sparse features (n, L, d) float16: y depends on 4 neurons in each of the
    middle third of layers (weaker signal further from the centre), features correlated
    through a shared low-rank component and of very different scales."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_groups, n)
    latent = rng.standard_normal((n, 8))
    X = np.empty((n, L, d), np.float16)
    logit = np.zeros(n)
    centre = L // 2
    for l in range(L):
        load = rng.standard_normal((8, d)) * 0.5
        scale = rng.uniform(0.1, 10.0, d)
        Xl = (latent @ load + rng.standard_normal((n, d))) * scale
        if abs(l - centre) <= max(1, L // 6):
            strength = 1.0 / (1 + abs(l - centre))
            for j, w in zip(rng.choice(d, 4, replace=False), (1.5, -1.0, 1.0, -0.5)):
                logit += strength * w * Xl[:, j] / scale[j]
        X[:, l] = Xl.astype(np.float16)
    logit += 0.3 * (groups - 1)                       # datasets differ in base rate
    y = (logit + rng.standard_normal(n) > 0).astype(np.int64)
    return X, y, groups


def reference_probes(X_tr, y_tr, X_va, y_va, g_va, c_values, epochs=500, lr=1e-3,
                     patience=10):
    """Per layer, per C: Adam full batch on raw features. -> (val_f1 (L,), coef (L, d))."""
    n, L, d = X_tr.shape
    yt = torch.as_tensor(y_tr, dtype=torch.float32)
    yv = torch.as_tensor(y_va, dtype=torch.float32)
    best_f1 = np.full(L, -1.0)
    best_coef = np.zeros((L, d), np.float32)
    bce = torch.nn.BCEWithLogitsLoss()
    for l in range(L):
        Xl = torch.as_tensor(np.asarray(X_tr[:, l], np.float32))
        Vl = torch.as_tensor(np.asarray(X_va[:, l], np.float32))
        for C in c_values:
            g = torch.Generator().manual_seed(l)
            lin = torch.nn.Linear(d, 1)
            with torch.no_grad():
                lin.weight.uniform_(-d ** -0.5, d ** -0.5, generator=g)
                lin.bias.zero_()
            opt = torch.optim.Adam(lin.parameters(), lr=lr)
            best_loss, best_state, stale = np.inf, None, 0
            for _ in range(epochs):
                opt.zero_grad()
                loss = bce(lin(Xl).squeeze(1), yt) + lin.weight.abs().sum() / C
                loss.backward()
                opt.step()
                with torch.no_grad():
                    vloss = float(bce(lin(Vl).squeeze(1), yv))
                if vloss < best_loss - 1e-6:
                    best_loss, stale = vloss, 0
                    best_state = {k: v.clone() for k, v in lin.state_dict().items()}
                else:
                    stale += 1
                    if stale >= patience:
                        break
            lin.load_state_dict(best_state)
            with torch.no_grad():
                pred = (lin(Vl).squeeze(1) > 0).numpy()
            f1 = float(mean_group_macro_f1_columns(y_va, pred, g_va)[0])
            if f1 > best_f1[l]:
                best_f1[l] = f1
                best_coef[l] = lin.weight.detach().numpy()[0]
    return best_f1, best_coef


def bench(X_tr, y_tr, g_tr, X_va, y_va, g_va, c_values, *, selection_threshold=0.9, n_trials=3,
          n_folds=2, head_epochs=40, seed=0, reference=True) -> dict:
    """Time and score: our probes, the reference probes, and a short head search.

    X_* (n, L, d), y_* (n,), g_* (n,) dataset index. -> dict of results (JSON-ready)."""
    from siren.pipeline.tune import tune_head                    # training-only import

    out: dict = {"shape_train": list(X_tr.shape), "n_val": int(X_va.shape[0]),
                 "c_values": [float(c) for c in c_values], "threads": torch.get_num_threads()}
    t = time.perf_counter()
    grid = fit_probe_grid(X_tr, y_tr, X_va, y_va, g_va, c_values, groups_train=g_tr)
    out["ours_s"] = time.perf_counter() - t
    out["ours_val_f1_mean"] = float(grid.val_f1.mean())
    out["ours_val_f1_max"] = float(grid.val_f1.max())
    out["ours_zero_frac"] = float(np.mean(grid.coef == 0))
    out["ours_max_iter"] = int(grid.n_iter_by_C.max())
    sel = select_neurons(grid.coef, selection_threshold)
    out["ours_selected"] = n_selected(sel)

    if reference:
        t = time.perf_counter()
        ref_f1, ref_coef = reference_probes(X_tr, y_tr, X_va, y_va, g_va, c_values)
        out["ref_s"] = time.perf_counter() - t
        out["ref_val_f1_mean"] = float(ref_f1.mean())
        out["ref_val_f1_max"] = float(ref_f1.max())
        out["ref_zero_frac"] = float(np.mean(ref_coef == 0))
        out["ref_selected"] = n_selected(select_neurons(ref_coef, selection_threshold))
        out["probe_speedup"] = out["ref_s"] / out["ours_s"]

    # head: Optuna search over train+validation with our selection
    w = layer_weights(grid.val_f1)
    A = np.concatenate([aggregate(X_tr, sel, w), aggregate(X_va, sel, w)])
    y_all = np.concatenate([y_tr, y_va])
    g_all = np.concatenate([g_tr, g_va])
    t = time.perf_counter()
    res = tune_head(A, y_all, g_all, n_trials=n_trials, n_folds=n_folds, seed=seed,
                    max_epochs=head_epochs, patience=10)
    out["head_s"] = time.perf_counter() - t
    out["head_trials"] = n_trials
    out["head_cv_f1"] = res.best_value
    out["head_pruned"] = res.n_pruned
    out["head_input_dim"] = int(A.shape[1])
    out["head_best_params"] = res.best_params
    return out


def table(r: dict) -> str:
    rows = [("stage", "time_s", "val_f1_mean", "val_f1_max", "zero_frac", "selected")]
    rows.append(("probes ours", f"{r['ours_s']:.2f}", f"{r['ours_val_f1_mean']:.4f}",
                 f"{r['ours_val_f1_max']:.4f}", f"{r['ours_zero_frac']:.3f}",
                 str(r["ours_selected"])))
    if "ref_s" in r:
        rows.append(("probes reference", f"{r['ref_s']:.2f}", f"{r['ref_val_f1_mean']:.4f}",
                     f"{r['ref_val_f1_max']:.4f}", f"{r['ref_zero_frac']:.3f}",
                     str(r["ref_selected"])))
    rows.append((f"head ({r['head_trials']} trials)", f"{r['head_s']:.2f}",
                 f"cv {r['head_cv_f1']:.4f}", "", "", str(r["head_input_dim"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    if "probe_speedup" in r:
        lines.append(f"probe time ratio reference/ours: {r['probe_speedup']:.1f}x")
    return "\n".join(lines)


def cached_run(run_dir: str, rep: str):
    """(X, y, groups) of the train and validation splits of a finished run, from the feature cache."""
    from pathlib import Path

    from siren.pipeline.cache import load_split
    from siren.pipeline.extract import ensure_features

    cfg = json.loads((Path(run_dir) / "results.json").read_text())["config"]
    paths = ensure_features(cfg["model"], cfg["datasets"], splits=("train", "validation"), pooling_types=[rep],
                            data_dir=cfg["data_dir"], seed=cfg["seed"], val_ratio=cfg["val_ratio"],
                            max_per_split=cfg["max_per_split"], cache_dir=cfg["cache_dir"],
                            batch_tokens=cfg["batch_tokens"], batch_size=cfg.get("batch_size"), dtype=cfg["dtype"],
                            device=cfg["device"],
                            cache_dtype=cfg["cache_dtype"], max_length=cfg["max_length"])
    tr = load_split(paths, cfg["datasets"], "train", rep)
    va = load_split(paths, cfg["datasets"], "validation", rep)
    # In RAM on purpose: the Adam reference (the authors' way) needs whole arrays.
    return (tr.X[:], tr.y, tr.groups), (va.X[:], va.y, va.groups)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", nargs=3, type=int, metavar=("N", "L", "D"))
    ap.add_argument("--run", help="a training output folder (train/probes/optuna/{MODEL}_general)")
    ap.add_argument("--pooling_type", default="residual_mean")
    ap.add_argument("--c_values", nargs="*", type=float, default=[200.0, 500.0, 1000.0])
    ap.add_argument("--selection_threshold", type=float, default=0.9)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--head_epochs", type=int, default=40)
    ap.add_argument("--no_reference", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if (a.synthetic is None) == (a.run is None):
        ap.error("give exactly one of --run DIR or --synthetic N L D")
    if a.run:
        tr, va = cached_run(a.run, a.pooling_type)
        data_desc = {"run": a.run, "pooling_type": a.pooling_type, "train_shape": list(tr[0].shape)}
    else:
        n, L, d = a.synthetic
        X, y, g = synthetic(int(n * 1.25), L, d, seed=a.seed)
        tr, va = (X[:n], y[:n], g[:n]), (X[n:], y[n:], g[n:])
        data_desc = {"synthetic": [n, L, d]}
    r = bench(*tr, *va, a.c_values, selection_threshold=a.selection_threshold, n_trials=a.trials, n_folds=a.folds,
              head_epochs=a.head_epochs, seed=a.seed, reference=not a.no_reference)
    r.update(data_desc)
    text = json.dumps(r, indent=2)
    print(text)
    if a.out:
        from siren.fileio import atomic_write_text

        atomic_write_text(a.out, text + "\n")
    print(table(r), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
