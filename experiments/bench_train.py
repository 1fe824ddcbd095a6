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

Head search, old against new (``--head_compare``): the probes and selection as above (or
``--aggregated Z.npz`` holding the head's input Z (n, k), y (n,), g (n,)), then, in this one
process and one after the other, ``tune_head`` with each variant's settings (``--variants``;
``old`` is the search as it was: MedianPruner over all folds, first width up to 2048,
patience 20, per-tensor AdamW). ``--holdout F`` keeps a stratified share F of the
train+validation rows out of the search, to compare, per variant, the final head refit on
all search rows (for the CV epoch count) against the mean of the best trial's fold heads
(``head.ensemble_heads``) on rows neither saw. The probes that chose the head's inputs did see
them, unless the input was written with ``--probe_holdout S`` (the held-out rows of seed S kept
out of the probes' fit, C choice and layer weights too): without it, held-out F1 on the
offline-six rows came out about 0.03 too high (experiments/head_search_offline6/README.md).
No test rows are read.

Usage: python experiments/bench_train.py --run train/probes/optuna/smollm2-135m_general [--trials 3] [--out b.json]
       python experiments/bench_train.py --synthetic 2000 16 256
       python experiments/bench_train.py --run DIR --head_compare --trials 8 --folds 3 --head_epochs 200 --holdout 0.2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import numpy as np
import torch

from siren.checks import DTYPES
from siren.metrics import mean_group_macro_f1_columns
from siren.pipeline.probes import C_RULES, fit_probe_grid
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


# name -> head-search settings: tune_head's pruner, width_cap, patience, fused, bf16 (autocast),
# and scale (multiply each standardised input by its layer weight: scale_by_layer_weight).
# "old" is the search before the speed work; "new" what configs/defaults.yaml says now.
_BASE = dict(pruner="median", width_cap=2048, patience=20, fused=True, bf16=False, scale=False)
HEAD_VARIANTS: dict[str, dict] = {
    "old": {**_BASE, "fused": False},
    "fused": dict(_BASE),
    "fused_w1024": {**_BASE, "width_cap": 1024},
    "fused_w512": {**_BASE, "width_cap": 512},
    "fused_p10": {**_BASE, "patience": 10},
    "fused_halving": {**_BASE, "pruner": "halving"},
    "fused_w512_p10": {**_BASE, "width_cap": 512, "patience": 10},
    "fused_w512_halving": {**_BASE, "width_cap": 512, "pruner": "halving"},
    "fused_w512_p10_halving": {**_BASE, "width_cap": 512, "patience": 10, "pruner": "halving"},
    "halving_p10": {**_BASE, "patience": 10, "pruner": "halving"},
    "halving_p10_bf16": {**_BASE, "patience": 10, "pruner": "halving", "bf16": True},
    "halving_p10_bf16_scaled": {**_BASE, "patience": 10, "pruner": "halving", "bf16": True, "scale": True},
    "halving_bf16_scaled": {**_BASE, "pruner": "halving", "bf16": True, "scale": True},
    "halving_p10_w1024_bf16_scaled": {**_BASE, "patience": 10, "pruner": "halving", "bf16": True, "scale": True,
                                      "width_cap": 1024},
    "halving_p10_w640_bf16_scaled": {**_BASE, "patience": 10, "pruner": "halving", "bf16": True, "scale": True,
                                     "width_cap": 640},
    "bf16": {**_BASE, "bf16": True},
    "bf16_scaled": {**_BASE, "bf16": True, "scale": True},
}


def _new_variant() -> dict:
    """The defaults of configs/defaults.yaml as a variant (head_dtype resolved as training does)."""
    from siren.config import load
    from siren.pipeline.train import head_bf16

    d = load("train")
    return dict(pruner=d.pruner, width_cap=d.head_width_cap, patience=d.patience, fused=True,
                bf16=head_bf16(d), scale=bool(d.scale_by_layer_weight))


HEAD_VARIANTS["new"] = _new_variant()
HEAD_VARIANTS["new_dataset_balanced"] = {**HEAD_VARIANTS["new"], "balance": "dataset_label"}
HEAD_VARIANTS["new_unbalanced"] = {**HEAD_VARIANTS["new"], "balance": "none"}
HEAD_VARIANTS["new_stop_loss"] = {**HEAD_VARIANTS["new"], "stop_on": "loss"}
HEAD_VARIANTS["new_p5"] = {**HEAD_VARIANTS["new"], "patience": 5}
HEAD_VARIANTS["new_ema90"] = {**HEAD_VARIANTS["new"], "ema": 0.9}
HEAD_VARIANTS["new_ema97"] = {**HEAD_VARIANTS["new"], "ema": 0.97}
HEAD_VARIANTS["new_indrop20"] = {**HEAD_VARIANTS["new"], "input_dropout": 0.2}
HEAD_VARIANTS["new_indrop50"] = {**HEAD_VARIANTS["new"], "input_dropout": 0.5}
HEAD_VARIANTS["new_b128"] = {**HEAD_VARIANTS["new"], "batch_size": 128}
HEAD_VARIANTS["new_tpe3"] = {**HEAD_VARIANTS["new"], "sampler_startup_trials": 3}
HEAD_VARIANTS["new_no_pruner"] = {**HEAD_VARIANTS["new"], "pruner": "none"}
HEAD_VARIANTS["new_wd01"] = {**HEAD_VARIANTS["new"], "weight_decay": 0.1}
HEAD_VARIANTS["new_wd1"] = {**HEAD_VARIANTS["new"], "weight_decay": 1.0}
# AdamW's decoupled decay holds |w| near 1 / weight_decay at equilibrium (each step moves a weight by
# about lr, the decay pulls lr * weight_decay * w): with first-layer weights of about 0.01-0.05, a decay
# only binds from about 30 up.
HEAD_VARIANTS["new_wd30"] = {**HEAD_VARIANTS["new"], "weight_decay": 30.0}
HEAD_VARIANTS["new_wd100"] = {**HEAD_VARIANTS["new"], "weight_decay": 100.0}
# the same search with bf16 autocast's own weight casts (new tensors every step), as before
# siren.pipeline.head._CastOnceLinear: the same heads, for timing side by side
HEAD_VARIANTS["new_plain_casts"] = {**HEAD_VARIANTS["new"], "cast_buffers": False}


def holdout_split(y, g, share: float, seed: int):
    """Stratified (dataset, label) split of row indices -> (search_idx, holdout_idx)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    strata = np.asarray(g).astype(np.int64) * 2 + np.asarray(y).astype(np.int64)
    a, b = train_test_split(idx, test_size=share, random_state=seed, stratify=strata)
    return np.sort(a), np.sort(b)


def probe_holdout_mismatch(data, share: float, seed: int) -> str | None:
    """data: a loaded head input (.npz). If its probes were fitted without the held-out rows of
    another (share, seed) than these (its ``probe_holdout``, written by --probe_holdout), the
    message that says so; else None."""
    if "probe_holdout" not in data.files:
        return None
    done = float(data["probe_holdout"][0]), int(data["probe_holdout"][1])
    if done == (share, seed):
        return None
    return (f"its probes were fitted without the held-out rows of --holdout {done[0]} --seed {done[1]}, "
            f"not of --holdout {share} --seed {seed}: use that split, or write the input again with "
            f"bench_train.py --probe_holdout {seed}")


def trial_fold_heads(Zs, ys, gs, trial: dict, tkw: dict, fkw: dict, *, n_folds: int, seed: int, max_epochs: int,
                     scale) -> tuple[list, list[float]]:
    """Refit one completed trial's fold heads exactly as tune_head's search fitted them (same folds,
    seeds, early stopping) -> (heads, their fold scores), to ensemble more trials than the best."""
    from siren.metrics import mean_group_macro_f1
    from siren.mlp import predict_proba_head
    from siren.pipeline.head import fit_head
    from siren.pipeline.tune import cv_folds, params_from_trial

    params = params_from_trial(trial["params"])
    heads, scores = [], []
    for f, (tr, va) in enumerate(cv_folds(ys, gs, n_folds, seed)):
        model, _ = fit_head(Zs, ys, rows=tr, **params, seed=seed + trial["number"] * 1000 + f,
                            max_epochs=max_epochs, patience=tkw["patience"], X_val=Zs, y_val=ys,
                            groups_val=gs, val_rows=va, fused=tkw["fused"], bf16=tkw["bf16"],
                            column_scale=scale, groups=gs, **{k: v for k, v in fkw.items() if k != "groups"})
        pred = (predict_proba_head(model, Zs[va]) >= 0.5).astype(np.int64)
        scores.append(float(mean_group_macro_f1(ys[va], pred, gs[va])))
        heads.append(model)
    return heads, scores


def logreg_proba(Ztr, ytr, colw, c):
    """An L2 logistic regression (label-balanced, C = c) fitted on Ztr's columns standardised
    with Ztr's own statistics, times colw -> a function: rows (m, k) -> harmful probability (m,)."""
    from sklearn.linear_model import LogisticRegression

    # statistics in float64: Z is float16 on disk, and numpy's float16 sums overflow (inf std)
    mu, sd = Ztr.mean(0, dtype=np.float64), Ztr.std(0, dtype=np.float64) + 1e-6
    m = LogisticRegression(C=c, class_weight="balanced", max_iter=300).fit((Ztr - mu) / sd * colw, ytr)
    return lambda rows: m.predict_proba((rows - mu) / sd * colw)[:, 1]


def logreg_oof_c(Zs, ys, gs, colw, folds, c_grid) -> tuple[dict, float]:
    """logreg_proba's mean-over-datasets macro-F1 for each C on the search's own folds ->
    ({C: cv F1}, best C; ties: the smaller C)."""
    from siren.metrics import mean_group_macro_f1

    cv = {}
    for c in c_grid:
        oof = np.zeros(len(ys))
        for tr, va in folds:
            oof[va] = logreg_proba(Zs[tr], ys[tr], colw, c)(Zs[va])
        cv[float(c)] = float(mean_group_macro_f1(ys, (oof >= 0.5).astype(np.int64), gs))
    return cv, max(cv, key=lambda c: (cv[c], -c))


def head_compare(Z, y, g, variants: list[str], *, n_trials: int, n_folds: int, max_epochs: int,
                 seed: int, holdout: float = 0.0, colw: np.ndarray | None = None, top_trials: int = 1,
                 extra_fold_sets: int = 0, logreg: bool = False) -> list[dict]:
    """Run tune_head once per variant on Z (n, k); colw (k,) each column's layer weight (for
    the "scale" variants); -> one dict per variant (JSON-ready). With a holdout, also:
    top_trials > 1: the holdout F1 of the fold heads of the best 2, 3, ... completed trials,
    averaged; extra_fold_sets > 0: that of the best trial's configuration fitted again on new
    CV splits (seeds seed + 7919 j), its fold heads added to the ensemble one set at a time;
    logreg: that of an L2 logistic regression on the same inputs (C from the search's folds)
    alone and averaged (probabilities) with the fold ensemble."""
    from siren.metrics import macro_f1, mean_group_macro_f1
    from siren.mlp import logits_of, predict_proba_head
    import siren.pipeline.head as head_mod
    from siren.pipeline.head import ensemble_heads, fit_head
    from siren.pipeline.tune import tune_head

    search, held = (holdout_split(y, g, holdout, seed) if holdout > 0
                    else (np.arange(len(y)), np.arange(0)))
    Zs, ys, gs = Z[search], y[search], g[search]
    # warm-up (first-call costs: kernels, allocator), so that the first variant is not charged
    fit_head(Zs[:64], ys[:64], layer_dims=[64, 64], dropout_rates=[0.2, 0.2], lr=1e-3, seed=0,
             max_epochs=2, fused=True)
    fit_head(Zs[:64], ys[:64], layer_dims=[64, 64], dropout_rates=[0.2, 0.2], lr=1e-3, seed=0,
             max_epochs=2, fused=False)
    rows = []
    for name in variants:
        kw = HEAD_VARIANTS[name]
        if kw["scale"] and colw is None:
            raise SystemExit(f"variant {name} scales by layer weight: the data has no column weights")
        tkw = {k: v for k, v in kw.items() if k not in ("scale", "cast_buffers")}
        fkw = {"groups": gs, "balance": kw["balance"]} if "balance" in kw else {}
        for key in ("ema", "input_dropout", "batch_size", "weight_decay"):
            if key in kw:
                fkw[key] = kw[key]
        scale = colw if kw["scale"] else None
        head_mod._CAST_INTO_KEPT_BUFFERS = kw.get("cast_buffers", True)
        t = time.perf_counter()
        try:
            res = tune_head(Zs, ys, gs, n_trials=n_trials, n_folds=n_folds, seed=seed,
                            max_epochs=max_epochs, progress=False, column_scale=scale, **tkw)
        finally:
            head_mod._CAST_INTO_KEPT_BUFFERS = True
        row = {"variant": name, **kw, "search_s": time.perf_counter() - t,
               "cv_f1": res.best_value, "n_pruned": res.n_pruned,
               "n_complete": res.n_trials_complete, "best_params": res.best_params,
               "best_epochs": res.best_epochs,
               "trial_values": [tr["value"] for tr in res.trials]}
        if res.fold_heads:      # the best trial's fold heads, bytes: equal digests = the same heads
            digest = hashlib.sha256()
            for h in res.fold_heads:
                for key, v in h.state_dict().items():
                    digest.update(key.encode() + v.detach().contiguous().numpy().tobytes())
            row["fold_heads_sha256"] = digest.hexdigest()
        if len(held):
            p = res.best_params
            epochs = max(1, int(round(res.best_epochs or max_epochs)))
            t = time.perf_counter()
            refit, _ = fit_head(Zs, ys, layer_dims=p["layer_dims"], dropout_rates=p["dropout_rates"],
                                lr=p["lr"], seed=seed, max_epochs=epochs, fused=kw["fused"],
                                bf16=kw["bf16"], column_scale=scale, **fkw)
            row["refit_s"] = time.perf_counter() - t
            f1_of = lambda p, t=0.5: float(mean_group_macro_f1(    # noqa: E731
                y[held], (p >= t).astype(np.int64), g[held]))         # holdout probabilities (m,) -> F1
            f1 = lambda m, t=0.5: f1_of(predict_proba_head(m, Z[held]), t)   # noqa: E731
            row["holdout_f1_refit"] = f1(refit)
            if res.fold_heads:
                p_ens = predict_proba_head(ensemble_heads(res.fold_heads), Z[held])
                row["holdout_f1_fold_ensemble"] = f1_of(p_ens)
                row["holdout_f1_fold_ensemble_by_dataset"] = {
                    int(d): macro_f1(y[held][g[held] == d], (p_ens[g[held] == d] >= 0.5).astype(np.int64))
                    for d in np.unique(g[held])}
            if res.fold_heads and res.oof_proba is not None:
                # the decision threshold chosen on the search's out-of-fold scores, then applied
                # to the rows the search never saw
                from siren.metrics import best_threshold

                thr, oof_f1 = best_threshold(ys, res.oof_proba, gs)
                row["cv_threshold"], row["oof_f1_at_cv_threshold"] = thr, oof_f1
                row["holdout_f1_fold_ensemble_cv_threshold"] = f1_of(p_ens, thr)
            if res.fold_heads and top_trials > 1:
                ranked = sorted((t for t in res.trials if t["state"] == "COMPLETE"),
                                key=lambda t: (-t["value"], t["number"]))
                heads, row["holdout_f1_top_trials"], row["top_trials_refit_fold_scores"] = list(res.fold_heads), [], []
                Xh = torch.as_tensor(np.asarray(Z[held], dtype=np.float32))
                for n_trials_averaged, t in enumerate(ranked[1:top_trials], start=2):
                    more, scores = trial_fold_heads(Zs, ys, gs, t, tkw, fkw, n_folds=n_folds, seed=seed,
                                                    max_epochs=max_epochs, scale=scale)
                    # the refit must be the search's own fit: its fold scores are the recorded ones
                    row["top_trials_refit_fold_scores"].append(
                        {"number": t["number"], "search": t["user_attrs"]["fold_scores"], "refit": scores})
                    heads += more
                    # trials differ in depth and dropout, so average their logits here rather than
                    # build one MLPHead (ensemble_heads) from them
                    logits = torch.stack([logits_of(h, Xh).float() for h in heads]).mean(dim=0)
                    proba = torch.softmax(logits, dim=1)[:, 1].numpy()
                    row["holdout_f1_top_trials"].append(
                        {"trials": n_trials_averaged, "value_cv": t["value"],
                         "width": sum(h.layer_dims[0] for h in heads),
                         "holdout_f1": f1_of(proba)})
            if res.fold_heads and extra_fold_sets > 0:
                best = min((t for t in res.trials if t["state"] == "COMPLETE" and t["value"] == res.best_value),
                           key=lambda t: t["number"])       # tune_head's pick: higher value, then lower number
                heads, row["holdout_f1_extra_fold_sets"] = list(res.fold_heads), []
                for j in range(1, extra_fold_sets + 1):
                    more, scores = trial_fold_heads(Zs, ys, gs, best, tkw, fkw, n_folds=n_folds, seed=seed + 7919 * j,
                                                    max_epochs=max_epochs, scale=scale)
                    heads += more
                    row["holdout_f1_extra_fold_sets"].append(
                        {"sets": j + 1, "heads": len(heads), "fold_scores": scores,
                         "holdout_f1_this_set": f1(ensemble_heads(more)),
                         "holdout_f1": f1(ensemble_heads(heads))})
            if res.fold_heads and logreg:
                from siren.pipeline.tune import cv_folds

                w = colw if scale is not None else np.ones(Z.shape[1])
                t = time.perf_counter()
                row["logreg_cv"], c = logreg_oof_c(Zs, ys, gs, w, cv_folds(ys, gs, n_folds, seed),
                                                   (1e-3, 3e-3, 1e-2, 3e-2))
                p_lr = logreg_proba(Zs, ys, w, c)(Z[held])
                row.update(logreg_c=c, logreg_s=time.perf_counter() - t, holdout_f1_logreg=f1_of(p_lr),
                           holdout_f1_fold_ensemble_logreg_mean=f1_of((p_lr + p_ens) / 2))
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("variant", "search_s", "cv_f1", "n_pruned")}),
              file=sys.stderr, flush=True)
    return rows


def head_table(rows: list[dict]) -> str:
    base = rows[0]
    head = ["variant", "pruner", "w_cap", "pat", "fused", "bf16", "scale", "search_s", "x_first", "cv_f1",
            "d_cv", "pruned"]
    has_ho = "holdout_f1_refit" in base
    if has_ho:
        head += ["refit_s", "ho_f1_refit", "ho_f1_folds", "cv_thr", "ho_f1_folds_cv_thr"]
    out = [head]
    for r in rows:
        line = [r["variant"], r["pruner"], str(r["width_cap"]), str(r["patience"]), str(r["fused"]),
                str(r["bf16"]), str(r["scale"]),
                f"{r['search_s']:.1f}", f"{base['search_s'] / r['search_s']:.2f}",
                f"{r['cv_f1']:.4f}", f"{r['cv_f1'] - base['cv_f1']:+.4f}", str(r["n_pruned"])]
        if has_ho:
            line += [f"{r['refit_s']:.1f}", f"{r['holdout_f1_refit']:.4f}",
                     f"{r.get('holdout_f1_fold_ensemble', float('nan')):.4f}",
                     f"{r.get('cv_threshold', float('nan')):.2f}",
                     f"{r.get('holdout_f1_fold_ensemble_cv_threshold', float('nan')):.4f}"]
        out.append(line)
    widths = [max(len(x[i]) for x in out) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(x, widths)) for x in out)


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


def cached_run(run_dir: str, rep: str, dtype: str | None = None):
    """(X, y, groups) of the train and validation splits of a finished run, from the feature cache.

    dtype: the backbone's dtype for the features (e.g. "float32"); None reads the run's own.
    Features of another dtype are extracted first, and replace the cache's entries of the run's
    dtype (the cache keeps one entry per dataset, split and pooling type): use a copy of it."""
    from pathlib import Path

    from siren.pipeline.cache import load_split
    from siren.pipeline.extract import ensure_features

    cfg = json.loads((Path(run_dir) / "results.json").read_text())["config"]
    # The dtype the run's features were extracted in (as the guard records it), not a fresh
    # resolution of "auto", which may differ on another host and would re-extract everything.
    guard_cfg = Path(run_dir) / "siren_config.json"
    if dtype is None:
        dtype = cfg["dtype"]
        if guard_cfg.exists():
            dtype = (json.loads(guard_cfg.read_text()).get("siren") or {}).get("dtype") or dtype
    paths = ensure_features(cfg["model"], cfg["datasets"], splits=("train", "validation"), pooling_types=[rep],
                            data_dir=cfg["data_dir"], seed=cfg["seed"], val_ratio=cfg["val_ratio"],
                            max_per_split=cfg["max_per_split"], cache_dir=cfg["cache_dir"],
                            batch_tokens=cfg["batch_tokens"], batch_size=cfg.get("batch_size"), dtype=dtype, device=cfg["device"],
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
    ap.add_argument("--aggregated", help="an .npz with the head's input Z (n, k), y (n,), g (n,)")
    ap.add_argument("--head_compare", action="store_true", help="time and CV F1 of head-search variants")
    ap.add_argument("--variants", nargs="+", default=["old", "new"],
                    help=f"with --head_compare: {', '.join(HEAD_VARIANTS)}")
    ap.add_argument("--top_trials", type=int, default=1,
                    help="with --head_compare and --holdout: also the holdout F1 of the best 2..N trials' fold heads averaged")
    ap.add_argument("--extra_fold_sets", type=int, default=0,
                    help="with --head_compare and --holdout: also fit the best configuration on this many new CV "
                         "splits and report the holdout F1 of the growing fold-head ensemble")
    ap.add_argument("--logreg", action="store_true",
                    help="with --head_compare and --holdout: also an L2 logistic regression alone and averaged with the fold heads")
    ap.add_argument("--holdout", type=float, default=0.0,
                    help="with --head_compare: share of rows kept out of the search (refit vs fold heads)")
    ap.add_argument("--save_aggregated", help="write the head's input (Z, y, g, colw, layer) to this .npz and stop")
    ap.add_argument("--max_layer", type=int,
                    help="keep only the head's input columns of layers <= this (what stopping the "
                         "backbone after that layer would leave)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--probe_tol", type=float,
                    help="with --run and --save_aggregated/--head_compare: the probes' stopping tolerance "
                         "(default: training's, configs/defaults.yaml's probe_tol)")
    ap.add_argument("--probe_refit", action=argparse.BooleanOptionalAction,
                    help="with --run and --save_aggregated/--head_compare: fit each layer's chosen probe again on "
                         "train+validation (default: training's, configs/defaults.yaml's probe_refit)")
    ap.add_argument("--probe_holdout", type=int, metavar="SEED",
                    help="with --run and --save_aggregated: keep the held-out rows of --holdout's share (0.2 if "
                         "unset) at this seed out of the probes too (fit, C choice and layer weights), so that "
                         "the held-out F1 of --head_compare / config_sweep.py at that seed is measured on rows "
                         "that chose none of the head's inputs")
    ap.add_argument("--dtype", choices=DTYPES,
                    help="with --run: the backbone dtype of the features read (default: the run's own); "
                         "another dtype is extracted first, replacing the run's cached train and validation "
                         "features of this pooling type (point the run's results.json at a copy of the cache)")
    ap.add_argument("--probe_c_rule", choices=C_RULES,
                    help="with --run and --save_aggregated/--head_compare: how each layer's C is picked "
                         "(default: training's, configs/defaults.yaml's probe_c_rule)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if sum(x is not None for x in (a.synthetic, a.run, a.aggregated)) != 1:
        ap.error("give exactly one of --run DIR, --synthetic N L D or --aggregated Z.npz")
    if a.probe_holdout is not None:
        if a.aggregated or not (a.head_compare or a.save_aggregated):
            ap.error("--probe_holdout fits the probes: use it with --run (or --synthetic) and --save_aggregated or --head_compare")
        if a.head_compare and not a.save_aggregated and (not a.holdout or a.seed != a.probe_holdout):
            ap.error(f"--probe_holdout {a.probe_holdout} keeps --holdout's rows at that seed out of the probes: "
                     f"give --holdout 0.2 --seed {a.probe_holdout} (now --holdout {a.holdout} --seed {a.seed})")
    if a.head_compare or a.save_aggregated:
        unknown = [v for v in a.variants if v not in HEAD_VARIANTS]
        if unknown:
            ap.error(f"unknown variants {unknown}: use {', '.join(HEAD_VARIANTS)}")
        extra_npz = {}
        if a.aggregated:
            d = np.load(a.aggregated)
            Z, y, g = d["Z"].astype(np.float32), d["y"], d["g"]
            colw = d["colw"] if "colw" in d.files else None
            layer = d["layer"] if "layer" in d.files else None
            wrong = a.holdout and probe_holdout_mismatch(d, a.holdout, a.seed)
            if wrong:
                ap.error(f"{a.aggregated}: {wrong}")
        else:
            tr, va = (cached_run(a.run, a.pooling_type, a.dtype) if a.run else None), None
            if tr is None:
                n, L, dd = a.synthetic
                X, yy, gg = synthetic(int(n * 1.25), L, dd, seed=a.seed)
                tr, va = (X[:n], yy[:n], gg[:n]), (X[n:], yy[n:], gg[n:])
            else:
                tr, va = tr
            from siren.config import defaults

            yaml = defaults()
            if a.probe_tol is None:
                a.probe_tol = float(yaml["probe_tol"])
            a.probe_c_rule = a.probe_c_rule or yaml["probe_c_rule"]
            if a.probe_refit is None:
                a.probe_refit = bool(yaml["probe_refit"])
            y, g = np.concatenate([tr[1], va[1]]), np.concatenate([tr[2], va[2]])
            ptr, pva = tr, va
            if a.probe_holdout is not None:
                # The held-out rows are train + validation rows: without this, the probes that chose
                # the head's inputs were fitted on most of them (and chose C on the rest), and the
                # held-out F1 of an input comes out about 0.03 too high (experiments/head_search_offline6).
                share = a.holdout or 0.2
                _, held = holdout_split(y, g, share, a.probe_holdout)
                keep = np.ones(len(y), bool)
                keep[held] = False
                kt, kv = keep[:len(tr[1])], keep[len(tr[1]):]
                ptr, pva = tuple(x[kt] for x in tr), tuple(x[kv] for x in va)
                extra_npz = {"probe_holdout": np.array([share, a.probe_holdout], np.float64)}
            grid = fit_probe_grid(ptr[0], ptr[1], pva[0], pva[1], pva[2], a.c_values, groups_train=ptr[2],
                                  tol=a.probe_tol, c_rule=a.probe_c_rule, refit=a.probe_refit, progress=False)
            sel, w = select_neurons(grid.coef, a.selection_threshold), layer_weights(grid.val_f1)
            Z = np.concatenate([aggregate(tr[0], sel, w), aggregate(va[0], sel, w)])
            colw = np.concatenate([np.full(len(sel[l]), w[l]) for l in sorted(sel)])
            layer = np.concatenate([np.full(len(sel[l]), l) for l in sorted(sel)])   # (k,) each column's layer
        if a.max_layer is not None:
            if layer is None:
                ap.error(f"{a.aggregated} has no 'layer' array: write it again with --save_aggregated")
            keep = layer <= a.max_layer
            Z, layer = Z[:, keep], layer[keep]
            colw = None if colw is None else colw[keep]
        if a.save_aggregated:
            extra = {k: v for k, v in (("colw", colw), ("layer", layer)) if v is not None}   # None would pickle
            extra.update(extra_npz)
            np.savez(a.save_aggregated, Z=Z.astype(np.float16), y=y, g=g, **extra)
            print(f"wrote {a.save_aggregated}: Z {Z.shape}")
            return 0
        rows = head_compare(Z, y, g, a.variants, n_trials=a.trials, n_folds=a.folds,
                            max_epochs=a.head_epochs, seed=a.seed, holdout=a.holdout, colw=colw,
                            top_trials=a.top_trials, extra_fold_sets=a.extra_fold_sets, logreg=a.logreg)
        r = {"head_compare": rows, "shape": list(Z.shape), "max_layer": a.max_layer,
             "threads": torch.get_num_threads(),
             "trials": a.trials, "folds": a.folds, "max_epochs": a.head_epochs,
             "holdout": a.holdout, "seed": a.seed}
        text = json.dumps(r, indent=2)
        print(text)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text + "\n")
        print(f"Z {tuple(Z.shape)}, {a.trials} trials x {a.folds} folds, max {a.head_epochs} epochs, "
              f"threads {torch.get_num_threads()}, holdout {a.holdout}")
        print(head_table(rows))
        return 0
    if a.run:
        tr, va = cached_run(a.run, a.pooling_type, a.dtype)
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
    from siren.errors import run_main

    raise SystemExit(run_main(main, "bench_train.py"))
