"""Evaluation entry point: `siren eval` (behind `test/eval_general_siren.sh`).

Reads: a trained guard folder (`siren_config.json` + `siren.safetensors`, default
`train/probes/optuna/{MODEL}_general/`), its `results.json` (to rebuild the exact training
splits and feature-cache settings), and the feature cache (siren.pipeline.extract; what is missing is
extracted with the backbone loaded once for all datasets).

Writes, next to the guard: `eval_results.json` (per dataset n, harmful, safe, macro-F1
(the paper's `f1`), harmful-class F1, accuracy, precision, recall, ROC-AUC, PR-AUC; averages
over datasets; `f1_ci95`, the 95% bootstrap interval of each macro-F1 and of their mean, from
1,000 resamples of each test set's rows), `test_scores.jsonl` (one line per test row: dataset, id,
label, score; `experiments/compare_guards.py` compares two guards on them), `roc.png` and `f1.png`
(macro-F1 with those intervals), and for a guard with a category head `categories`: per harm category
AUROC, PR-AUC and F1 at its stored threshold, beside a TF-IDF one-vs-rest baseline
(siren.evaluation.categories), and for a guard with an answer head `answers`: on the test rows
with a response, the answer verdict's metrics at its decision threshold beside the whole text's
(siren.evaluation.answers; `--no_answers` skips its backbone forward). Harmful-only sets (advbench, harmbench, simple_safety_tests)
report their detection rate (recall) and stay out of the averages.
With `--calibrate`, the threshold that maximises validation macro-F1 (mean over the training
datasets) becomes the guard's decision threshold, in `siren_config.json` and `best_model.pkl`
alike; the metrics are then reported at it, and at the previous one under `at_previous_threshold`.
`decision_threshold` in eval_results.json is always the threshold the main metrics used, and
`decision_threshold_source` says where it came from.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from siren import config as cfgmod
from siren.errors import SirenError
from siren.fileio import atomic_write_json, atomic_write_text, save_figure, save_roc_figure

AVERAGED = ("f1", "harmful_f1", "accuracy", "precision", "recall", "roc_auc", "pr_auc")
BOOTSTRAP_RESAMPLES = 1000   # per dataset, for the 95% intervals of macro-F1 (f1_ci95)


# Settings an evaluation takes from the training run's results.json when no flag gives them.
FROM_RUN = ("datasets", "data_dir", "max_per_split", "batch_size", "batch_tokens", "dtype", "device", "cache_dir",
            "trust_remote_code")


def add_arguments(p) -> None:
    cfgmod.add_flags(p, "eval", default_note={k: "the training run's" for k in FROM_RUN})


def run(args) -> int:
    from siren import checks

    # Checked before any data or backbone loads.
    cfg = cfgmod.from_args("eval", args)
    checks.check_device(cfg.device)
    if cfg.cache_dir is not None:
        checks.check_writable_dir(cfg.cache_dir, "--cache_dir")
    report = evaluate(args)
    print_table(report)
    return 0


def read_training_config(folder: Path) -> dict:
    """The resolved training config in `<folder>/results.json` ({} when there is no such file);
    SirenError when the file is corrupt or has no config."""
    path = folder / "results.json"
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SirenError(f"{path} is not valid JSON ({err}): the file is corrupt; retrain, or move it away "
                         "and pass --datasets") from None
    except RecursionError:
        raise SirenError(f"{path} is nested too deeply: the file is corrupt; retrain, or move it away "
                         "and pass --datasets") from None
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        raise SirenError(f"{path} has no \"config\" object (the training run's settings): it is not a SIREN "
                         "results file or is damaged; retrain, or move it away and pass --datasets")
    return results["config"]


def pick_cache_dir(cfg) -> Path:
    from siren.pipeline.cache import default_cache_dir

    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


def backbone_dims(model: str, trust_remote_code: bool) -> tuple[int, int] | None:
    """(layers, hidden size) from the backbone's config, without its weights; None when the
    config cannot be read here (e.g. a Hub id offline). Custom-code backbones are refused."""
    from siren.backbones import backbone_config

    try:
        cfg = backbone_config(model, trust_remote_code=trust_remote_code)
    except SirenError as err:
        if "--trust_remote_code" in str(err) or "unknown backbone" in str(err):
            raise
        return None
    return int(cfg.num_hidden_layers), int(cfg.hidden_size)


def classification_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """y (n,) 0/1, score (n,) P(harmful) -> the reported metrics at `threshold`."""
    from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, precision_score, recall_score,
                                 roc_auc_score)

    pred = (score >= threshold).astype(np.int64)
    out = {"n": int(len(y)), "harmful": int(y.sum()), "safe": int(len(y) - y.sum())}
    if y.min() == y.max():  # one class only: detection (or false-alarm) rate is what means something
        out["recall" if y[0] == 1 else "false_positive_rate"] = float(pred.mean())
        return out
    out.update({
        "f1": float(f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0)),
        "harmful_f1": float(f1_score(y, pred, pos_label=1, zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
    })
    return out


@dataclass
class EvalSetup:
    """What `evaluate` reads before any features: the guard, the settings, the datasets."""

    cfg: object                 # the EvalConfig: flags, else the training run's settings, else defaults.yaml
    train_cfg: object           # the TrainConfig of the run (seed, val_ratio, cache_dtype)
    folder: Path
    config: dict                # siren_config.json
    model: str
    dims: tuple[int, int] | None
    datasets: list[str]
    extras: list[str]
    split_kw: dict
    rep: str                    # the pooling type
    selection: dict
    weights: np.ndarray         # (L,)
    head: object
    threshold: float

    @property
    def everything(self) -> list[str]:
        return self.datasets + self.extras


def evaluate(args) -> dict:
    from siren import data

    setup = load_setup(args)
    start = time.perf_counter()
    train_datasets = [d for d in setup.datasets if not data.is_eval_only(d)]
    if setup.cfg.calibrate and not train_datasets:
        raise SirenError("--calibrate needs datasets with a validation split (the training datasets)")
    paths = eval_features(setup)
    scores_of = scorer(setup, paths)
    threshold, calibration, source = calibrate(setup, scores_of, train_datasets)
    per_dataset, curves, replicates, score_rows = score_datasets(setup, scores_of, threshold, calibration)
    report = build_report(setup, per_dataset, replicates, threshold, source, calibration,
                          seconds=round(time.perf_counter() - start, 2))
    report["categories"] = category_block(setup.folder, paths, setup.rep, setup.selection, setup.weights,
                                          setup.everything, train_datasets, setup.split_kw)
    if setup.cfg.answers and (setup.config.get("siren") or {}).get("answer_head"):
        from siren.evaluation.answers import evaluate_answers

        report["answers"] = evaluate_answers(setup.folder, setup.datasets, setup.split_kw, setup.cfg,
                                             classification_metrics)
    if calibration:
        prev = [per_dataset[n]["at_previous_threshold"] for n in report["averaged_over"]]
        report["average_at_previous_threshold"] = {k: float(np.mean([c[k] for c in prev])) for k in AVERAGED}
    write_outputs(setup.folder, report, score_rows, curves)
    return report


def load_setup(args) -> EvalSetup:
    """The guard and its run's settings, checked (writable folders, the backbone's sizes, known
    datasets) before any data or backbone loads."""
    from siren import checks, data
    from siren.artifact import load_guard_config, load_head, selection_from_config
    from siren.runtime.guard import check_backbone
    from siren.runtime.loading import local_guard

    given = cfgmod.given(args, "eval")
    named = given.get("guard") or given.get("model") or cfgmod.default("model", "eval")
    folder = local_guard(named, "siren eval")   # the one resolver: siren.config.find_guard
    config = load_guard_config(folder)
    trained = read_training_config(folder)
    # flags, else the training run's settings, else configs/defaults.yaml
    cfg = cfgmod.load("eval", given, base={k: trained.get(k) for k in FROM_RUN})
    train_cfg = cfgmod.load("train", base=trained)   # seed, val_ratio, cache_dtype of the run
    model = trained.get("model") or config.get("siren", {}).get("backbone") or config["base_model"]["model_id"]
    checks.check_writable_dir(folder, "guard folder (eval_results.json is written there)")
    checks.check_writable_dir(pick_cache_dir(cfg), "--cache_dir")
    # The checks `siren score` makes when it loads the backbone, made here from its config alone
    # (no weights); if the config cannot be read (an offline Hub id), on the cached features.
    dims = backbone_dims(model, cfg.trust_remote_code)
    if dims is not None:
        check_backbone(config, SimpleNamespace(num_layers=dims[0], hidden_size=dims[1]), str(folder))
    datasets = list(cfg.datasets or [])
    if not datasets and not cfg.extra_datasets:
        raise SirenError("no datasets to evaluate: pass --datasets (the guard folder has no results.json)")
    extras = [d for d in cfg.extra_datasets if d not in datasets]
    unknown = [d for d in datasets + extras if d not in data.known_datasets()]
    if unknown:
        raise SirenError(f"unknown dataset(s) {unknown}: known are {', '.join(data.known_datasets())}")

    split_kw = dict(data_dir=cfg.data_dir, seed=train_cfg.seed, val_ratio=train_cfg.val_ratio,
                    max_per_split=cfg.max_per_split)
    _, selection, weight_of = selection_from_config(config)
    L = dims[0] if dims is not None else int(config.get("siren", {}).get("num_layers") or max(selection) + 1)
    weights = np.ones(L, dtype=np.float32)  # (L,): aggregate() reads only the selected layers'
    for layer, w in weight_of.items():
        weights[layer] = w
    return EvalSetup(cfg=cfg, train_cfg=train_cfg, folder=folder, config=config, model=model, dims=dims,
                     datasets=datasets, extras=extras, split_kw=split_kw,
                     rep=config["siren_module"]["pooling_type"], selection=selection, weights=weights,
                     head=load_head(folder), threshold=float(config["inference"]["default_threshold"]))


def eval_features(setup: EvalSetup) -> dict:
    """{(dataset, split, pooling type): cache entry} for the test splits (and validation with
    --calibrate). One call: the backbone is loaded at most once, and only if some cache is missing or stale."""
    from siren.pipeline.extract import ensure_features

    cfg = setup.cfg
    return ensure_features(setup.model, setup.everything,
                           splits=("validation", "test") if cfg.calibrate else ("test",),
                           pooling_types=[setup.rep], cache_dir=cfg.cache_dir, batch_tokens=cfg.batch_tokens,
                           batch_size=cfg.batch_size, dtype=cfg.dtype, device=cfg.device,
                           cache_dtype=setup.train_cfg.cache_dtype,
                           max_length=int(setup.config["inference"]["max_length"]),
                           trust_remote_code=cfg.trust_remote_code, **setup.split_kw)


def scorer(setup: EvalSetup, paths: dict):
    """key -> (y (n,) int64, P(harmful) (n,), ids (n,)) of one cached split."""
    from siren.mlp import predict_proba_head
    from siren.pipeline.cache import load_features
    from siren.pipeline.select import aggregate
    from siren.runtime.guard import check_backbone

    def scores_of(key):
        fs = load_features(paths[key])
        if setup.dims is None:  # (n, L, d): the backbone's sizes, as the cache holds them
            check_backbone(setup.config, SimpleNamespace(num_layers=fs.X.shape[1], hidden_size=fs.X.shape[2]),
                           str(setup.folder))
        return (np.asarray(fs.y).astype(np.int64),
                predict_proba_head(setup.head, aggregate(fs.X, setup.selection, setup.weights)), np.asarray(fs.ids))

    return scores_of


def calibrate(setup: EvalSetup, scores_of, train_datasets: list[str]) -> tuple[float, dict | None, str]:
    """(threshold, calibration, source): with --calibrate, the threshold that maximises the mean
    validation macro-F1 of the training datasets, stored in the guard; else the guard's own."""
    from siren.artifact import set_default_threshold
    from siren.metrics import best_threshold, score_thresholds

    threshold = setup.threshold
    if not setup.cfg.calibrate:
        return threshold, None, "the guard's inference.default_threshold"
    pairs = [scores_of((d, "validation", setup.rep))[:2] for d in train_datasets]
    ys = np.concatenate([y for y, _ in pairs])
    ss = np.concatenate([s for _, s in pairs])
    gs = np.concatenate([np.full(len(y), k) for k, (y, _) in enumerate(pairs)])
    calibrated, _ = best_threshold(ys, ss, gs, grid=score_thresholds(ss))
    calibration = {"previous_threshold": threshold, "calibrated_threshold": calibrated,
                   "calibrated_on": [f"{d}/validation" for d in train_datasets]}
    set_default_threshold(setup.folder, calibrated)  # siren_config.json and best_model.pkl
    return calibrated, calibration, "calibrated by this evaluation (now the guard's default_threshold)"


def score_datasets(setup: EvalSetup, scores_of, threshold: float, calibration: dict | None):
    """Per test set: its metrics (with the bootstrap interval of macro-F1 when both classes are
    present). Returns (per_dataset, curves {name: (y, s)}, replicates {name: (B,)}, score_rows)."""
    from siren.metrics import bootstrap_macro_f1, percentile_interval

    per_dataset, curves, replicates, score_rows = {}, {}, {}, []
    for k, name in enumerate(setup.everything):
        y, s, ids = scores_of((name, "test", setup.rep))
        score_rows += [{"dataset": name, "id": str(i), "label": int(t), "score": float(v)}
                       for i, t, v in zip(ids, y, s)]
        entry = classification_metrics(y, s, threshold)
        if calibration:
            entry["at_previous_threshold"] = classification_metrics(y, s, calibration["previous_threshold"])
        entry["harmful_only"] = bool(y.min() == 1)
        if "f1" in entry:   # both classes present: how far resampling the test rows moves macro-F1
            replicates[name] = bootstrap_macro_f1(y, s >= threshold, n_boot=BOOTSTRAP_RESAMPLES,
                                                  boot_seed=setup.split_kw["seed"] + k)
            entry["f1_ci95"] = list(percentile_interval(replicates[name]))
        per_dataset[name] = entry
        if y.min() != y.max():
            curves[name] = (y, s)
    return per_dataset, curves, replicates, score_rows


def build_report(setup: EvalSetup, per_dataset: dict, replicates: dict, threshold: float, source: str,
                 calibration: dict | None, seconds: float) -> dict:
    """eval_results.json's content but `categories`: the metrics, their averages over the datasets
    with both classes (and the average's bootstrap interval), the settings."""
    from siren.metrics import percentile_interval

    split_kw = setup.split_kw
    averaged = [n for n, e in per_dataset.items() if "f1" in e]
    average = {k: float(np.mean([per_dataset[n][k] for n in averaged])) for k in AVERAGED} if averaged else {}
    if averaged:   # each dataset resampled on its own; replicate b of the average = the mean of their b-th
        average["f1_ci95"] = list(percentile_interval(np.mean([replicates[n] for n in averaged], axis=0)))
    return {
        "model": setup.model,
        "guard": str(setup.folder),
        "decision_threshold": threshold,
        "decision_threshold_source": source,
        "calibration": calibration,
        "datasets": per_dataset,
        "average": average,
        "averaged_over": averaged,
        # the paper's keys: per-dataset macro-F1 and their mean
        "f1": {n: per_dataset[n]["f1"] for n in averaged},
        "average_f1": average.get("f1"),
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "level": 0.95, "seed": split_kw["seed"],
                      "method": "percentile interval of macro-F1 over resamples (with replacement) of each "
                                "dataset's test rows, dataset k drawn with seed + k; the average's interval from "
                                "the mean of the datasets' replicates"},
        "config": {**setup.cfg.as_dict(), "datasets": setup.datasets, "extra_datasets": setup.extras, **split_kw},
        "seconds": seconds,
        "note": "offline copies are not the paper's splits: numbers are not comparable with the paper's table"
        if split_kw["data_dir"] or os.environ.get("SIREN_DATA_DIR") else None,
    }


def write_outputs(folder: Path, report: dict, score_rows: list[dict], curves: dict) -> None:
    """test_scores.jsonl, eval_results.json, roc.png and f1.png into the guard folder."""
    # every test row's score, for error analysis and paired comparisons of two guards
    # (experiments/compare_guards.py); written before eval_results.json, so a finished report has its rows beside it
    atomic_write_text(folder / "test_scores.jsonl", "".join(json.dumps(r) + "\n" for r in score_rows))
    atomic_write_json(folder / "eval_results.json", report)
    plot_results(folder, report, curves)


def category_block(folder, paths, rep, selection, weights, datasets, train_datasets, split_kw) -> dict | None:
    """Per-category metrics of the guard's category head and the TF-IDF baseline on the test rows
    (siren.evaluation.categories); None when the guard has no category head."""
    from siren.evaluation.categories import evaluate_categories
    from siren.pipeline.cache import load_features
    from siren.pipeline.select import aggregate

    def features_of(name):
        fs = load_features(paths[(name, "test", rep)])
        return aggregate(fs.X, selection, weights), np.asarray(fs.ids)

    return evaluate_categories(folder, features_of, datasets, train_datasets, split_kw, int(split_kw["seed"]))


def plot_results(folder: Path, report: dict, curves: dict) -> None:
    """roc.png: ROC curve per dataset; f1.png: macro-F1 and harmful-F1 per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {report['datasets'][name]['roc_auc']:.3f})")
    save_roc_figure(fig, ax, f"SIREN · {report['model']}", folder / "roc.png")

    names = report["averaged_over"]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names) + 2), 4))
    x = np.arange(len(names) + 1)
    macro = [report["datasets"][n]["f1"] for n in names] + [report["average"].get("f1", 0)]
    harm = [report["datasets"][n]["harmful_f1"] for n in names] + [report["average"].get("harmful_f1", 0)]
    # 95% bootstrap interval of each macro-F1 bar (absent in reports written before it existed)
    ci = [report["datasets"][n].get("f1_ci95") for n in names] + [report["average"].get("f1_ci95")]
    err = None
    if all(c is not None for c in ci):
        err = np.array([[max(0.0, v - c[0]) for v, c in zip(macro, ci)], [max(0.0, c[1] - v) for v, c in zip(macro, ci)]])
    ax.bar(x - 0.2, macro, 0.4, label="macro-F1", yerr=err, capsize=3 if err is not None else 0,
           error_kw={"lw": 1})
    ax.bar(x + 0.2, harm, 0.4, label="harmful-F1")
    for i, (xi, v) in enumerate(zip(x, macro)):   # the value above its interval's whisker
        ax.text(xi - 0.2, (v if err is None else v + err[1, i]) + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(x, names + ["average"], rotation=30, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_title(f"SIREN · {report['model']} · decision threshold {report['decision_threshold']:.3g}"
                 + ("\n(whiskers: 95% bootstrap interval of macro-F1 over the test rows)" if err is not None else ""),
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, folder / "f1.png")
    plt.close(fig)


def print_table(report: dict) -> None:
    cols = ["n", "harmful", "safe", "f1", "harmful_f1", "accuracy", "precision", "recall", "roc_auc", "pr_auc"]
    print(f"\n{'dataset':20s} " + " ".join(f"{c:>10s}" for c in cols))
    for name, e in report["datasets"].items():
        cells = [f"{e[c]:10d}" if isinstance(e.get(c), int) else (f"{e[c]:10.4f}" if c in e else f"{'-':>10s}")
                 for c in cols]
        print(f"{name:20s} " + " ".join(cells) + ("   (harmful only: recall = detection rate)" if e["harmful_only"] else ""))
    if report["average"]:
        cells = [f"{'':>10s}"] * 3 + [f"{report['average'][c]:10.4f}" for c in cols[3:]]
        print(f"{'average':20s} " + " ".join(cells))
    intervals = [(n, e["f1_ci95"]) for n, e in report["datasets"].items() if "f1_ci95" in e]
    if report["average"].get("f1_ci95"):
        intervals.append(("average", report["average"]["f1_ci95"]))
    if intervals:
        boot = report.get("bootstrap") or {}
        print(f"macro-F1 95% intervals ({boot.get('resamples', '?')} bootstrap resamples of each test set): "
              + ", ".join(f"{n} {lo:.3f}-{hi:.3f}" for n, (lo, hi) in intervals))
    if report.get("calibration"):
        c = report["calibration"]
        print(f"decision threshold calibrated to {c['calibrated_threshold']:.4f} (metrics above; stored in the guard); "
              f"average macro-F1 at the previous {c['previous_threshold']:.4f}: "
              f"{report['average_at_previous_threshold']['f1']:.4f}")
    if report.get("categories"):
        from siren.evaluation.categories import markdown

        print("\n" + "\n".join(markdown(report["categories"])))
    if report.get("answers"):
        from siren.evaluation import answers

        print("\n" + "\n".join(answers.markdown(report["answers"])))
    print(f"results: {report['guard']}/eval_results.json, plots roc.png and f1.png")
