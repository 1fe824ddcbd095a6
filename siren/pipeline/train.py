"""Training entry point: `siren train` (behind `train/run_general_siren.sh`).

Reads: the datasets' seeded splits (siren.data) and the per-layer feature cache
(siren.pipeline.cache; whatever is missing or stale is extracted first by
siren.pipeline.extract, with the backbone loaded once).

Writes, into `train/probes/optuna/{MODEL}_general/` (`siren.config.output_dir`) or --out_dir:
- `splits.json`             the row ids of every split, {dataset: {split: [ids]}}
- `probes_<pooling>.npz`    every layer's probe: coefficients, intercepts, C, train/val F1
- `siren_config.json` + `siren.safetensors`   the guard (loadable by siren.runtime.guard and llm-siren)
- `best_model.pkl`          the paper's file, data only (see siren.artifact.load_best_model_pkl)
- `results.json`            resolved config, chosen hyperparameters, selection, F1s, stage times
- `layers.png`              probe validation F1 and selected neurons per layer
- `categories.safetensors` + `categories.json`   the harm-category head, when the training rows
                            carry categories (siren.pipeline.categories; `category_head: off` skips it)

All of it is written into a temporary folder beside the output folder and moved into place
(siren.pipeline.run_folder) only when every stage has succeeded: a run that fails leaves an existing output folder as it
was (files of an earlier run that the new one does not write, such as its eval_results.json,
are removed when the new run lands, since they describe another guard).

Stages (`train`): splits -> features -> per pooling type: probes, then per selection threshold
a neuron selection and an Optuna search -> the best candidate's head refit on
train+validation -> per-dataset test F1 -> save -> publish.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siren import config as cfgmod
from siren.errors import SirenError
from siren.fileio import atomic_write_json, jsonable
from siren.log import log
# The run folder's staging and publishing, the stage timer and the reports live in run_folder;
# their names stay importable from here.
from siren.pipeline.run_folder import (RUN_FILES, Stages, peak_rss_gib, plot_layers, print_summary,  # noqa: F401
                                       publish, staging_folder)


def add_arguments(p) -> None:
    cfgmod.add_flags(p, "train")


def run(args) -> int:
    from siren import checks
    from siren.pipeline.cache import default_cache_dir

    cfg = resolve_config(args)
    # Every value checked before data or the backbone loads (N_FOLDS again once the classes are known).
    checks.check_training_values(
        c_values=cfg.c_values, probe_tol=cfg.probe_tol, probe_c_rule=cfg.probe_c_rule, selection_thresholds=cfg.selection_thresholds,
        n_trials=cfg.n_trials, n_folds=cfg.n_folds, max_length=cfg.max_length, device=cfg.device, dtype=cfg.dtype,
        storage=cfg.storage, out_dir=cfg.out_dir, cache_dir=cfg.cache_dir or default_cache_dir(),
        positive={k: getattr(cfg, k) for k in ("max_epochs", "patience", "head_batch_size", "batch_size", "n_jobs",
                                      "batch_tokens", "head_width_cap")})
    from siren.pipeline.answer import check_answer_config

    check_answer_config(cfg.as_dict())
    results = train(cfg)
    print_summary(results)
    return 0


def resolve_config(args):
    """The TrainConfig: defaults.yaml overridden by the flags given; `datasets` and `out_dir` filled in."""
    cfg = cfgmod.from_args("train", args)
    if getattr(args, "datasets", None) is None:
        cfg = cfg.replace(datasets=cfgmod.default_datasets(cfg.data_dir))
    cfg = cfg.replace(out_dir=str(Path(cfg.out_dir) if cfg.out_dir else cfgmod.output_dir(cfg.model)))
    if cfg.decision_threshold is not None:  # here, not when the guard is saved hours later (a YAML .nan too)
        from siren.checks import check_decision_threshold

        check_decision_threshold(cfg.decision_threshold, "DECISION_THRESHOLD (--decision_threshold, or "
                                                         "decision_threshold in configs/defaults.yaml)")
    return cfg


# --------------------------------------------------------------------------- stage helpers

def check_datasets(datasets: list[str]) -> None:
    from siren import data

    unknown = [d for d in datasets if d not in data.known_datasets()]
    if unknown:
        raise SirenError(f"unknown dataset(s) {unknown}: known are {', '.join(data.known_datasets())}")
    eval_only = [d for d in datasets if data.is_eval_only(d)]
    if eval_only:
        raise SirenError(f"{eval_only} are evaluation-only (no training rows): leave them out of DATASETS")


def check_two_classes(y: np.ndarray, what: str) -> None:
    """Probes, selection and the head separate two classes: one class is a data error."""
    classes = np.unique(y)
    if len(classes) < 2:
        label = "harmful" if len(classes) and classes[0] == 1 else "safe"
        raise SirenError(f"the {what} rows are all {label} ({len(y)} rows): training needs harmful and safe "
                         "examples; add datasets or raise MAX_PER_SPLIT")


# --------------------------------------------------------------------------- stages

def write_splits(path: Path, datasets: list[str], split_kw: dict, n_folds: int) -> None:
    """Stage `splits`: the seeded split ids to splits.json; before any extraction, check that
    the training rows hold both classes and that every CV stratum fills `n_folds` folds."""
    from siren import checks, data

    frames = {name: data.load_splits(name, **split_kw) for name in datasets}
    check_two_classes(np.concatenate([f["train"]["label"].to_numpy() for f in frames.values()]), "training")
    checks.check_n_folds_fit(n_folds, data.label_counts(frames))
    data.write_split_ids(path, {name: {split: f["id"].tolist() for split, f in parts.items()}
                                for name, parts in frames.items()})


def extract_features(cfg, split_kw: dict) -> dict:
    """Stage `extract`: {(dataset, split, pooling type): cache entry}.

    In one process, caches that must be extracted are extracted in a spawned child process:
    the backbone, its activations and the allocator's leftovers leave with it, so the stages
    that follow start from a small heap and the run's peak memory is the larger of the two
    phases, not their sum (on the offline-six rows the head search used to start 1 GiB up).
    Under torchrun every rank extracts in its own process, as the ranks share the work."""
    import concurrent.futures
    import multiprocessing

    from siren.pipeline import distributed
    from siren.pipeline.extract import ensure_features

    kw = dict(pooling_types=cfg.pooling_types, cache_dir=cfg.cache_dir, batch_tokens=cfg.batch_tokens,
              batch_size=cfg.batch_size, dtype=cfg.dtype, device=cfg.device, cache_dtype=cfg.cache_dtype,
              max_length=cfg.max_length, trust_remote_code=bool(cfg.trust_remote_code), **split_kw)
    if distributed.rank_world()[1] > 1:
        return ensure_features(cfg.model, cfg.datasets, **kw)
    cached = ensure_features(cfg.model, cfg.datasets, cached_only=True, **kw)
    if all(e.status == "cached" for e in cached.values()):
        return cached           # nothing to extract: no child, no backbone
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(ensure_features, cfg.model, cfg.datasets, **kw).result()


def fit_probes(cfg, train_split, val_split):
    """Stage `probes`: the probe grid over the cached (memory-mapped) features, never copied whole."""
    from siren.pipeline.probes import fit_probe_grid

    return fit_probe_grid(train_split.X, train_split.y, val_split.X, val_split.y, val_split.groups,
                          [float(c) for c in cfg.c_values], groups_train=train_split.groups,
                          tol=float(cfg.probe_tol), c_rule=cfg.probe_c_rule,
                          refit=bool(cfg.probe_refit))


@dataclass
class Candidate:
    """One (pooling type, selection threshold) and its tuned head.

    Z (n, k) float16 or float32 (the cache's dtype): the selected neurons of train+validation
    rows, the head's input."""

    pooling_type: str
    selection_threshold: float
    selection: dict
    weights: np.ndarray
    tuned: object
    Z: np.ndarray | None
    y: np.ndarray
    groups: np.ndarray
    n_neurons: int = 0

    def release(self) -> None:
        """Drop what only the chosen candidate needs (its head input, fold heads and
        out-of-fold scores), so a losing candidate does not hold memory while others are tuned."""
        self.Z = None
        self.tuned.fold_heads = None
        self.tuned.oof_proba = None


def tune_candidates(cfg, pooling: str, grid, train_split, val_split, seed: int,
                    spill_dir=None) -> list[Candidate]:
    """Stage `optuna`: per selection threshold, select neurons and tune the head by CV on
    train+validation. Only the selected neurons are gathered (row chunks of the memmaps), so
    memory is bounded by n x k, not n x L x d; fold heads wait in `spill_dir` (see tune_head)."""
    from siren.pipeline.select import aggregate, layer_weights, select_neurons

    weights = layer_weights(np.asarray(grid.val_f1), floor=cfg.layer_weight_floor)
    y = np.concatenate([train_split.y, val_split.y])
    groups = np.concatenate([train_split.groups, val_split.groups])
    out = []
    for selection_threshold in cfg.selection_thresholds:
        selection = select_neurons(np.asarray(grid.coef), float(selection_threshold))
        if not selection:
            raise SirenError(f"{pooling}: no probe kept a non-zero weight at C in {list(cfg.c_values)}, so no "
                             "neuron is selected; use larger C_VALUES (a weaker L1 penalty)")
        # Stored in the cache's dtype (float16 by default): a float16 cache's values times a layer
        # weight <= 1 fit float16, and the head trains on bf16 inputs anyway; half the memory.
        dtype = np.result_type(train_split.X.dtype, np.float16)
        Z = np.concatenate([aggregate(train_split.X, selection, weights, out_dtype=dtype),
                            aggregate(val_split.X, selection, weights, out_dtype=dtype)])
        study = f"{cfg.study_name}-{pooling}-t{selection_threshold}" if cfg.study_name else None
        tuned = search_head(cfg, Z, y, groups, seed, scale=column_scale(cfg, selection, weights), study_name=study,
                            spill_dir=spill_dir)
        log(f"{pooling} selection threshold {selection_threshold}: {Z.shape[1]} neurons, CV F1 {tuned.best_value:.4f}")
        out.append(Candidate(pooling, float(selection_threshold), selection, weights, tuned, Z, y, groups, n_neurons=int(Z.shape[1])))
    return out


def head_bf16(cfg) -> bool:
    """Whether the head trains under bf16 autocast. It trains on the CPU, so ``null``/auto: no
    without bf16 instructions, else whichever of bf16 and fp32 a short timed probe of head-sized
    training steps found faster (``siren.dtype_auto``: measured once per machine, cached)."""
    from siren import dtype_auto
    from siren.backbones import cache_root, native_bf16_cpu
    from siren.pipeline.head import measure_head

    dtype = cfg.head_dtype
    if dtype in (None, "", "auto"):
        return native_bf16_cpu() and dtype_auto.decide("head", "cpu", measure_head, cache_root()) == "bfloat16"
    return dtype in ("bfloat16", "bf16")


def column_scale(cfg, selection: dict, weights: np.ndarray) -> np.ndarray | None:
    """(k,) each head input's layer weight, in the aggregation order, or None when
    ``scale_by_layer_weight`` is off."""
    if not cfg.scale_by_layer_weight:
        return None
    return np.concatenate([np.full(len(selection[l]), float(weights[l])) for l in sorted(int(l) for l in selection)])


def search_head(cfg, Z: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, *,
                scale: np.ndarray | None = None, study_name: str | None = None, spill_dir=None):
    """The head search of a run's config on inputs Z (n, k), labels y (n,), dataset index
    groups (n,); scale (k,) or None: see ``column_scale``; spill_dir: where fold heads wait
    on disk during the search (None: in memory). Returns tune.TuneResult. The report's MLP
    baselines call this too, so they get the same search and budget."""
    from siren.pipeline.tune import tune_head

    return tune_head(Z, y, groups, n_trials=cfg.n_trials, n_folds=cfg.n_folds, seed=seed,
                     storage=cfg.storage, study_name=study_name, n_jobs=cfg.n_jobs,
                     max_epochs=cfg.max_epochs, patience=cfg.patience, batch_size=cfg.head_batch_size,
                     pruner=cfg.pruner, width_cap=cfg.head_width_cap, bf16=head_bf16(cfg),
                     column_scale=scale, spill_dir=spill_dir)


def final_head(cfg, tuned, Z: np.ndarray, y: np.ndarray, seed: int, *, scale: np.ndarray | None = None):
    """Stage `final_head`. ``final_head: ensemble``: the mean of the best configuration's CV
    fold heads (one head of K times the width, no training; each fold head early-stopped on
    rows it did not see). ``refit`` (or when another worker ran the best trial, so its fold
    heads are not here): that configuration retrained on all of Z; no rows are held out,
    so it trains for the epoch count that CV early stopping chose. Returns (head, history,
    epochs)."""
    from siren.pipeline.head import ensemble_heads, fit_head

    params = tuned.best_params
    epochs = max(1, int(round(tuned.best_epochs or cfg.max_epochs)))
    if cfg.final_head == "ensemble" and tuned.fold_heads:
        return ensemble_heads(tuned.fold_heads), {"train_loss": []}, epochs
    head, history = fit_head(Z, y, layer_dims=params["layer_dims"], dropout_rates=params["dropout_rates"],
                             lr=params["lr"], seed=seed, max_epochs=epochs, batch_size=cfg.head_batch_size,
                             bf16=head_bf16(cfg), column_scale=scale)
    return head, history, epochs


def decision_threshold(cfg, best: Candidate) -> tuple[float, str]:
    """(threshold, source). ``threshold_from_cv``: the threshold that maximises the mean
    macro-F1 of the best configuration's out-of-fold scores (each row scored by the fold
    head that did not train on it; train+validation rows only). Else the configured one."""
    from siren.metrics import best_threshold

    oof = best.tuned.oof_proba
    if cfg.threshold_from_cv and oof is not None:
        threshold, score = best_threshold(best.y, oof, best.groups)
        log(f"decision threshold {threshold:.2f} from the CV out-of-fold scores (mean macro-F1 {score:.4f} there)")
        return threshold, "cv"
    return float(cfg.decision_threshold), "config"


def test_f1(cfg, folders: dict, best: Candidate, head, threshold: float) -> dict[str, float]:
    """Stage `test`: macro-F1 per dataset at the decision threshold."""
    from siren.metrics import macro_f1
    from siren.mlp import predict_proba_head
    from siren.pipeline.cache import load_split
    from siren.pipeline.select import aggregate

    out = {}
    for name in cfg.datasets:
        split = load_split(folders, [name], "test", best.pooling_type)
        proba = predict_proba_head(head, aggregate(split.X, best.selection, best.weights))
        out[name] = macro_f1(split.y, (proba >= threshold).astype(np.int64))
    return out


def fit_categories(cfg, split_kw: dict, best: Candidate, ids: tuple[np.ndarray, np.ndarray]):
    """Stage `categories`: the harm-category head on the best candidate's inputs (train rows
    first, then validation), or None (siren.pipeline.categories.fit_run_categories)."""
    from siren.pipeline.categories import fit_run_categories

    return fit_run_categories(cfg.category_head, cfg.datasets, cfg.seed, split_kw, best.Z, np.concatenate(ids), best.groups, len(ids[0]))


def save_run(work: Path, cfg, best: Candidate, candidates: list[Candidate], grid, head, history,
             final_epochs: int, test: dict[str, float], seconds: dict[str, float], threshold: float,
             threshold_source: str) -> dict:
    """Stage `save`: the guard, best_model.pkl, results.json and layers.png into `work`."""
    from siren.artifact import (best_model_payload, describe_size, folder_size, head_tensors, save_best_model_pkl,
                                save_guard)
    from siren.backbones import resolve as resolve_backbone
    from siren.backbones import resolve_device, resolve_dtype

    source = resolve_backbone(cfg.model)
    params, pooling, selection = best.tuned.best_params, best.pooling_type, best.selection
    selected_layers = sorted(int(l) for l in selection)
    layer_weight_map = {int(l): float(best.weights[l]) for l in selected_layers}
    forward_dtype = str(resolve_dtype(cfg.dtype, resolve_device(cfg.device), cfg.model)).removeprefix("torch.")
    coef = np.asarray(grid.coef)
    head_state, n_heads = head_tensors(head)   # a fold ensemble: its K heads, each weight once
    save_guard(work, base_model_id=source.model_id, revision=source.revision if source.kind == "hub" else None,
               pooling_type=pooling, selection=selection, layer_weights=layer_weight_map,
               head_state=head_state,
               layer_dims=list(head.layer_dims), dropout_rates=list(head.dropout_rates),
               max_length=cfg.max_length, decision_threshold=threshold,
               extra={"backbone": cfg.model, "dtype": forward_dtype, "num_layers": int(coef.shape[0]),
                      "hidden_size": int(coef.shape[1]), "pooling_type": pooling,
                      "selection_threshold": best.selection_threshold, "seed": int(cfg.seed),
                      "train_datasets": list(cfg.datasets)}, head_ensemble=n_heads)
    test_avg = float(np.mean(list(test.values())))
    base_model = {"model_id": source.model_id, "revision": source.revision, "kind": source.kind}
    save_best_model_pkl(work / "best_model.pkl", best_model_payload(
        work, model=cfg.model, base_model=base_model,
        metrics={"cv_f1": float(best.tuned.best_value), "test_f1": test, "test_f1_average": test_avg}))
    sizes = folder_size(work)
    log(f"guard folder size: {describe_size(sizes)}")
    n_per_layer = {int(l): int(len(idx)) for l, idx in sorted(selection.items())}
    results = {
        "model": cfg.model,
        "base_model": base_model,
        "config": cfg.as_dict(),
        "chosen": {"pooling_type": pooling, "selection_threshold": best.selection_threshold, "head": params,
                   "final_epochs": final_epochs, "cv_f1": float(best.tuned.best_value),
                   "final_head": cfg.final_head, "saved_layer_dims": list(head.layer_dims)},
        "decision_threshold": float(threshold),
        "decision_threshold_source": threshold_source,
        "candidates": [{"pooling_type": c.pooling_type, "selection_threshold": c.selection_threshold,
                        "n_neurons": c.n_neurons, "cv_f1": float(c.tuned.best_value),
                        "n_trials_complete": c.tuned.n_trials_complete, "n_pruned": c.tuned.n_pruned}
                       for c in candidates],
        "n_selected_neurons": int(sum(n_per_layer.values())),
        "n_total_neurons": int(coef.size),
        "selected_neurons_per_layer": n_per_layer,
        "layer_weights": layer_weight_map,
        "probes": {"chosen_C": [float(c) for c in grid.chosen_C], "train_f1": [float(x) for x in grid.train_f1],
                   "val_f1": [float(x) for x in grid.val_f1]},
        "test_f1": test,
        "test_f1_average": test_avg,
        "guard_bytes": sizes,
        "final_head_train_loss": [round(float(x), 5) for x in history["train_loss"]],
        "timings_s": {k: round(v, 2) for k, v in seconds.items()},
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "note": "offline copies are not the paper's splits: numbers are not comparable with the paper's table"
        if cfg.data_dir or os.environ.get("SIREN_DATA_DIR") else None,
    }
    atomic_write_json(work / "results.json", jsonable(results))
    plot_layers(work / "layers.png", grid, n_per_layer, title=f"{cfg.model} · {pooling}")
    return results


def train(cfg) -> dict:
    """Run every stage for a resolved config (`resolve_config`); returns the results dict also
    written to results.json, plus `out_dir`."""
    from siren.pipeline.answer import fit_answer_stage, main_cv_folds, save_answer_head
    from siren.pipeline.cache import load_split

    datasets = list(cfg.datasets)
    check_datasets(datasets)
    out_dir = Path(cfg.out_dir)
    seed = int(cfg.seed)
    stage = Stages()
    split_kw = dict(data_dir=cfg.data_dir, seed=seed, val_ratio=cfg.val_ratio, max_per_split=cfg.max_per_split)

    with staging_folder(out_dir) as work:
        with stage("splits"):
            write_splits(work / "splits.json", datasets, split_kw, cfg.n_folds)
        with stage("extract"):
            folders = extract_features(cfg, split_kw)
        candidates, grids, best = [], {}, None
        for pooling in cfg.pooling_types:
            train_split = load_split(folders, datasets, "train", pooling)
            val_split = load_split(folders, datasets, "validation", pooling)
            ids = (train_split.ids, val_split.ids)     # the same rows for every pooling type
            with stage("probes"):
                grids[pooling] = grid = fit_probes(cfg, train_split, val_split)
            np.savez(work / f"probes_{pooling}.npz", **{k: np.asarray(v) for k, v in grid.to_dict().items()})
            with stage("optuna"):
                for c in tune_candidates(cfg, pooling, grid, train_split, val_split, seed, spill_dir=work):
                    candidates.append(c)
                    if best is None or c.tuned.best_value > best.tuned.best_value:   # ties: the first
                        if best is not None:
                            best.release()
                        best = c
                    else:
                        c.release()
        with stage("final_head"):
            head, history, final_epochs = final_head(cfg, best.tuned, best.Z, best.y, seed,
                                                     scale=column_scale(cfg, best.selection, best.weights))
        threshold, threshold_source = decision_threshold(cfg, best)
        with stage("answer"):   # the answer verdict's head, when training rows hold responses
            # the saved head is the CV fold ensemble: its fold heads give the answer rows out-of-fold scores
            ensemble = cfg.final_head == "ensemble" and bool(best.tuned.fold_heads)
            folds = main_cv_folds(np.concatenate([train_split.ids, val_split.ids]), best.y, best.groups,
                                  cfg.n_folds, seed) if ensemble else None
            answer = fit_answer_stage(cfg.as_dict(), best.selection, best.weights, best.pooling_type, split_kw, head,
                                      seed, text_rows=(best.Z, best.y, best.groups), main_folds=folds)
        with stage("categories"):
            categories = fit_categories(cfg, split_kw, best, ids)
        best.release()      # the saved head is built; its inputs and fold heads are not needed any more
        with stage("test"):
            test = test_f1(cfg, folders, best, head, threshold)
        results = save_run(work, cfg, best, candidates, grids[best.pooling_type], head, history, final_epochs,
                           test, stage.seconds, threshold, threshold_source)
        if answer is not None:
            save_answer_head(work, answer)
            results["answer_head"] = answer.summary
        if categories is not None:
            categories.save(work)
            results["category_head"] = categories.config()
        if answer is not None or categories is not None:   # their files count in the folder's size
            from siren.artifact import describe_size, folder_size

            results["guard_bytes"] = folder_size(work)
            log(f"guard folder size with the answer and category heads: {describe_size(results['guard_bytes'])}")
            atomic_write_json(work / "results.json", jsonable(results))
    results["out_dir"] = str(out_dir)
    return results
