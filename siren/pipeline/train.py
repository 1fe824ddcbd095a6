"""Training entry point: `siren train` (behind `train/run_general_siren.sh`).

Reads: the datasets' seeded splits (siren.data) and the per-layer feature cache
(siren.pipeline.extract; whatever is missing or stale is extracted first, with the backbone loaded once).

Writes, into `train/probes/optuna/{MODEL}_general/` (or --out_dir):
- `splits.json`             the row ids of every split, {dataset: {split: [ids]}}
- `probes_<rep>.npz`        every layer's probe: coefficients, intercepts, C, train/val F1
- `siren_config.json` + `siren.safetensors`   the guard (loadable by siren.runtime.guard and llm-siren)
- `best_model.pkl`          the paper's file, data only (see siren.artifact.load_best_model_pkl)
- `results.json`            resolved config, chosen hyperparameters, selection, F1s, stage times
- `layers.png`              probe validation F1 and selected neurons per layer

Stages: splits -> features -> probes (per rep type) -> selection + Optuna (per threshold)
-> final head refit on train+validation -> per-dataset test F1 -> save.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from siren import config as cfgmod
from siren.errors import SirenError

TRAIN_KEYS = ["model", "datasets", "data_dir", "max_per_split", "seed", "val_ratio", "rep_types", "c_values",
              "thresholds", "n_trials", "n_folds", "n_jobs", "storage", "study_name", "batch_tokens", "dtype",
              "device", "cache_dtype", "cache_dir", "max_length", "max_epochs", "patience", "batch_size",
              "out_dir", "layer_weight_floor"]


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="backbone: registry name, local folder or Hub id")
    p.add_argument("--datasets", nargs="+", required=True, help="training datasets (siren data list)")
    p.add_argument("--data_dir", help="SIREN-ready JSONL folder (default: $SIREN_DATA_DIR, else the Hub)")
    p.add_argument("--max_per_split", nargs="+", type=int, help="cap rows per split and dataset (seeded, stratified): one number, or three for train validation test")
    p.add_argument("--seed", type=int)
    p.add_argument("--val_ratio", type=float)
    p.add_argument("--rep_types", nargs="+", help="residual_mean and/or mlp_mean")
    p.add_argument("--c_values", nargs="+", type=float, help="probe C grid (penalty ||w||_1 / C)")
    p.add_argument("--thresholds", nargs="+", type=float, help="neuron selection thresholds")
    p.add_argument("--n_trials", type=int)
    p.add_argument("--n_folds", type=int)
    p.add_argument("--n_jobs", type=int, default=1, help="parallel Optuna trials in this process")
    p.add_argument("--storage", help="Optuna storage: SQLite/journal file or RDB URL, shared by workers")
    p.add_argument("--study_name")
    p.add_argument("--batch_tokens", type=int)
    p.add_argument("--dtype", help="backbone dtype: float32 or bfloat16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--cache_dtype", choices=["float16", "float32"])
    p.add_argument("--cache_dir", help="feature cache (default: $SIREN_CACHE/features)")
    p.add_argument("--max_length", type=int)
    p.add_argument("--max_epochs", type=int)
    p.add_argument("--patience", type=int)
    p.add_argument("--batch_size", type=int, help="MLP head mini-batch size")
    p.add_argument("--out_dir", help="default: train/probes/optuna/{MODEL}_general")


def run(args) -> int:
    cfg = cfgmod.resolve(args, TRAIN_KEYS)
    from siren import checks
    from siren.pipeline.extract import default_cache_dir

    # Every value checked before data or the backbone loads (N_FOLDS again once the classes are known).
    checks.check_training_values(
        c_values=cfg["c_values"], selection_thresholds=cfg["thresholds"], n_trials=cfg["n_trials"],
        n_folds=cfg["n_folds"], max_length=cfg["max_length"], device=cfg["device"], dtype=cfg["dtype"],
        storage=cfg["storage"], out_dir=cfg["out_dir"] or cfgmod.output_dir(cfg["model"]),
        cache_dir=cfg["cache_dir"] or default_cache_dir(),
        positive={k: cfg[k] for k in ("max_epochs", "patience", "batch_size", "n_jobs", "batch_tokens")})
    results = train(cfg)
    print_summary(results)
    return 0


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class _Stages:
    """Wall time of each stage, printed as it ends and kept for results.json."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        stages = self

        class _Timer:
            def __enter__(self):
                self.start = time.perf_counter()
                print(f"[siren] stage {name} ...", flush=True)

            def __exit__(self, *exc):
                if exc[0] is None:
                    took = time.perf_counter() - self.start
                    stages.seconds[name] = stages.seconds.get(name, 0.0) + took
                    print(f"[siren] stage {name} done in {took:.1f} s (peak RSS {_peak_rss_gib():.2f} GiB)", flush=True)

        return _Timer()


def load_split(paths: dict, datasets: list[str], split: str, rep: str):
    """Stack one split of several datasets from the cache.

    Returns X (n, L, d) in the cache dtype, y (n,), groups (n,) dataset index, ids (n,).
    """
    from siren.pipeline.extract import load_features

    Xs, ys, gs, ids = [], [], [], []
    for gi, name in enumerate(datasets):
        key = (name, split, rep)
        if key not in paths:
            continue
        fs = load_features(paths[key])
        Xs.append(np.asarray(fs.X))
        ys.append(np.asarray(fs.y))
        gs.append(np.full(len(fs.y), gi, dtype=np.int64))
        ids.append(np.asarray(fs.ids))
    if not Xs:
        raise SirenError(f"no {split} rows for {datasets}: check DATASETS and the data dir")
    return np.concatenate(Xs), np.concatenate(ys).astype(np.int64), np.concatenate(gs), np.concatenate(ids)


def train(cfg: dict) -> dict:
    """Run every stage; returns the results dict also written to results.json."""
    from siren import checks, data
    from siren.artifact import save_best_model_pkl, save_guard
    from siren.backbones import resolve as resolve_backbone
    from siren.backbones import resolve_device, resolve_dtype
    from siren.pipeline.extract import ensure_features
    from siren.mlp import predict_proba_head
    from siren.pipeline.head import fit_head
    from siren.metrics import macro_f1, mean_group_macro_f1
    from siren.pipeline.probes import fit_probe_grid
    from siren.pipeline.select import aggregate, layer_weights, select_neurons
    from siren.pipeline.tune import tune_head

    datasets = list(cfg["datasets"])
    unknown = [d for d in datasets if d not in data.known_datasets()]
    if unknown:
        raise SirenError(f"unknown dataset(s) {unknown}: known are {', '.join(data.known_datasets())}")
    eval_only = [d for d in datasets if data.is_eval_only(d)]
    if eval_only:
        raise SirenError(f"{eval_only} are evaluation-only (no training rows): leave them out of DATASETS")
    out_dir = Path(cfg["out_dir"]) if cfg.get("out_dir") else cfgmod.output_dir(cfg["model"])
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg["seed"])
    stage = _Stages()
    split_kw = dict(data_dir=cfg["data_dir"], seed=seed, val_ratio=cfg["val_ratio"], max_per_split=cfg["max_per_split"])
    source = resolve_backbone(cfg["model"])

    with stage("splits"):
        splits = data.make_splits(datasets, **split_kw)
        checks.check_n_folds_fit(cfg["n_folds"], data.label_counts(splits))
        split_ids = data.split_ids_of(splits)
        del splits
        data.write_split_ids(out_dir / "splits.json", split_ids)

    with stage("extract"):
        paths = ensure_features(cfg["model"], datasets, rep_types=cfg["rep_types"], cache_dir=cfg["cache_dir"],
                                batch_tokens=cfg["batch_tokens"], dtype=cfg["dtype"], device=cfg["device"],
                                cache_dtype=cfg["cache_dtype"], max_length=cfg["max_length"], **split_kw)

    candidates = []  # one per (rep type, threshold)
    probe_summaries = {}
    for rep in cfg["rep_types"]:
        X_tr, y_tr, g_tr, _ = load_split(paths, datasets, "train", rep)
        X_va, y_va, g_va, _ = load_split(paths, datasets, "validation", rep)
        with stage("probes"):
            grid = fit_probe_grid(X_tr, y_tr, X_va, y_va, g_va, [float(c) for c in cfg["c_values"]])
        np.savez(out_dir / f"probes_{rep}.npz", **{k: np.asarray(v) for k, v in grid.to_dict().items()})
        probe_summaries[rep] = grid
        weights = layer_weights(np.asarray(grid.val_f1), floor=cfg["layer_weight_floor"])
        X_all = np.concatenate([X_tr, X_va])
        y_all = np.concatenate([y_tr, y_va])
        g_all = np.concatenate([g_tr, g_va])
        del X_tr, X_va
        for thr in cfg["thresholds"]:
            selection = select_neurons(np.asarray(grid.coef), float(thr))
            Z = aggregate(X_all, selection, weights)
            study = f"{cfg['study_name']}-{rep}-t{thr}" if cfg.get("study_name") else None
            with stage("optuna"):
                tuned = tune_head(Z, y_all, g_all, n_trials=cfg["n_trials"], n_folds=cfg["n_folds"], seed=seed,
                                  storage=cfg.get("storage"), study_name=study, n_jobs=cfg.get("n_jobs") or 1,
                                  max_epochs=cfg["max_epochs"], patience=cfg["patience"], batch_size=cfg["batch_size"])
            print(f"[siren] {rep} threshold {thr}: {Z.shape[1]} neurons, CV F1 {tuned.best_value:.4f}", flush=True)
            candidates.append(dict(rep=rep, threshold=float(thr), selection=selection, weights=weights,
                                   tuned=tuned, Z=Z, y=y_all, g=g_all))
        del X_all

    best = max(candidates, key=lambda c: c["tuned"].best_value)
    params = best["tuned"].best_params
    # No rows are held out in the refit: train for the epoch count CV early stopping chose.
    final_epochs = max(1, int(round(best["tuned"].best_epochs or cfg["max_epochs"])))
    with stage("final_head"):
        head, history = fit_head(best["Z"], best["y"], layer_dims=params["layer_dims"],
                                 dropout_rates=params["dropout_rates"], lr=params["lr"], seed=seed,
                                 max_epochs=final_epochs,
                                 batch_size=cfg["batch_size"], patience=cfg["patience"])

    with stage("test"):
        rep, selection, weights = best["rep"], best["selection"], best["weights"]
        test_f1 = {}
        for name in datasets:
            X_te, y_te, _, _ = load_split(paths, [name], "test", rep)
            proba = predict_proba_head(head, aggregate(X_te, selection, weights))
            test_f1[name] = macro_f1(y_te, (proba >= 0.5).astype(np.int64))
        test_f1_avg = float(np.mean(list(test_f1.values())))

    grid = probe_summaries[rep]
    selected_layers = sorted(int(l) for l in selection)
    layer_weight_map = {int(l): float(weights[l]) for l in selected_layers}
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    forward_dtype = str(resolve_dtype(cfg["dtype"], resolve_device(cfg["device"]))).removeprefix("torch.")
    extra = {"backbone": cfg["model"], "dtype": forward_dtype, "num_layers": int(len(grid.val_f1)), "hidden_size": int(np.asarray(grid.coef).shape[1]),
             "rep_type": rep, "selection_threshold": best["threshold"], "seed": seed, "train_datasets": datasets}
    save_guard(out_dir, base_model_id=source.model_id, revision=source.revision if source.kind == "hub" else None,
               pooling_type=rep, selection=selection, layer_weights=layer_weight_map, head_state=state,
               layer_dims=list(params["layer_dims"]), dropout_rates=list(params["dropout_rates"]),
               max_length=cfg["max_length"], threshold=0.5, extra=extra)

    n_per_layer = {int(l): int(len(idx)) for l, idx in sorted(selection.items())}
    results = {
        "model": cfg["model"],
        "base_model": {"model_id": source.model_id, "revision": source.revision, "kind": source.kind},
        "config": cfg,
        "chosen": {"rep_type": rep, "threshold": best["threshold"], "head": params,
                   "final_epochs": final_epochs,
                   "cv_f1": float(best["tuned"].best_value)},
        "candidates": [{"rep_type": c["rep"], "threshold": c["threshold"], "n_neurons": int(c["Z"].shape[1]),
                        "cv_f1": float(c["tuned"].best_value), "n_trials_complete": c["tuned"].n_trials_complete,
                        "n_pruned": c["tuned"].n_pruned} for c in candidates],
        "n_selected_neurons": int(sum(n_per_layer.values())),
        "n_total_neurons": int(np.asarray(grid.coef).size),
        "selected_neurons_per_layer": n_per_layer,
        "layer_weights": layer_weight_map,
        "probes": {"chosen_C": [float(c) for c in grid.chosen_C], "train_f1": [float(x) for x in grid.train_f1],
                   "val_f1": [float(x) for x in grid.val_f1]},
        "test_f1": test_f1,
        "test_f1_average": test_f1_avg,
        "final_head_train_loss": [round(float(x), 5) for x in history["train_loss"]],
        "timings_s": {k: round(v, 2) for k, v in stage.seconds.items()},
        "peak_rss_gib": round(_peak_rss_gib(), 3),
        "note": "offline copies are not the paper's splits: numbers are not comparable with the paper's table"
        if cfg.get("data_dir") or os.environ.get("SIREN_DATA_DIR") else None,
    }
    payload = {
        "format": "siren-best-model/1",
        "model": cfg["model"],
        "base_model": results["base_model"],
        "pooling_type": rep,
        "selected_layers": selected_layers,
        "selected_neurons": {str(l): np.asarray(idx, dtype=np.int64) for l, idx in sorted(selection.items())},
        "layer_weights": {str(l): w for l, w in layer_weight_map.items()},
        "mlp": {"input_dim": int(best["Z"].shape[1]), "layer_dims": list(params["layer_dims"]),
                "dropout_rates": list(params["dropout_rates"]), "num_classes": 2},
        "state_dict": {k: v.numpy() for k, v in state.items()},
        "threshold": 0.5,
        "max_length": int(cfg["max_length"]),
        "metrics": {"cv_f1": float(best["tuned"].best_value), "test_f1": test_f1, "test_f1_average": test_f1_avg},
    }
    save_best_model_pkl(out_dir / "best_model.pkl", payload)
    _write_json(out_dir / "results.json", results)
    plot_layers(out_dir / "layers.png", grid, n_per_layer, title=f"{cfg['model']} · {rep}")
    results["out_dir"] = str(out_dir)
    return results


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def plot_layers(path: Path, grid, n_per_layer: dict[int, int], title: str) -> None:
    """Probe validation F1 per layer (line, one per C and the chosen) and selected neurons per layer (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = len(grid.val_f1)
    layers = np.arange(L)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    by_c = np.asarray(grid.val_f1_by_C)
    for ci, c in enumerate(grid.c_values):
        ax1.plot(layers, by_c[ci], alpha=0.5, lw=1, label=f"C={c:g}")
    ax1.plot(layers, grid.val_f1, color="black", lw=2, marker="o", ms=3, label="chosen C")
    ax1.set_ylabel("probe val macro-F1\n(mean over datasets)")
    ax1.legend(fontsize=8, ncol=4)
    ax1.set_title(title)
    ax2.bar(layers, [n_per_layer.get(l, 0) for l in range(L)], color="tab:red")
    ax2.set_ylabel("selected neurons")
    ax2.set_xlabel("layer")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def print_summary(results: dict) -> None:
    print()
    print(f"{'dataset':20s} {'test macro-F1':>13s}")
    for name, f1 in results["test_f1"].items():
        print(f"{name:20s} {f1:13.4f}")
    print(f"{'average':20s} {results['test_f1_average']:13.4f}")
    print(f"selected neurons: {results['n_selected_neurons']} of {results['n_total_neurons']}; "
          f"chosen {results['chosen']['rep_type']} threshold {results['chosen']['threshold']}, "
          f"CV F1 {results['chosen']['cv_f1']:.4f}")
    print("stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["timings_s"].items()))
    print(f"outputs: {results['out_dir']}")
