"""Comparison report: `siren report` (behind `scripts/report.sh`).

Reads: a trained run folder (`results.json`, `splits.json`, the guard artifact, `layers.png`),
the rows and the feature cache of exactly its split ids (`siren.evaluation.baselines.RunData`),
optionally guard models (`siren.evaluation.guard_models`), and `configs/paper_results.yaml`
(the authors' reported table).

Writes, into `reports/<run name>/` (or --out), never into the run folder:
- `RESULTS.md`   the tables (macro-F1 and harmful-class F1 per test set and their average,
                 detection rate on harmful-only sets, training time, latency at batch 1 and 32,
                 input features and parameters), the setup (data, backbone, caps, seed, git
                 commit), the paper's table as reported by the authors, and the plots;
- `results.json` the same numbers, per system and dataset;
- `roc.png`      ROC curves of every system on the pooled test rows of the run's datasets;
- `layers.png`   the run's probe F1 and selected neurons per layer (copied from the run).
With a category head in the run's guard, RESULTS.md and results.json also hold its per-category
metrics beside a TF-IDF one-vs-rest baseline (siren.evaluation.categories).

Every system is scored at its own decision rule: P(harmful) >= 0.5 for the probability
systems, the parsed verdict for guard models (unparsed outputs are not flagged, and counted).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from siren.errors import SirenError
from siren.evaluation.report_writing import print_summary, write_report

# The source tree the code runs from, asked for its commit (an installed wheel has none: "unknown").
SOURCE = Path(__file__).resolve().parents[2]
THRESHOLD = 0.5


def add_arguments(p) -> None:
    from siren import config as cfgmod

    cfgmod.add_flags(p, "report", required=("run",))


def run(args) -> int:
    from siren import config as cfgmod

    report = build_report(cfgmod.from_args("report", args))
    print_summary(report)
    return 0


# --------------------------------------------------------------------------- metrics

def metrics(y: np.ndarray, pred: np.ndarray, score: np.ndarray) -> dict:
    """y, pred (n,) 0/1, score (n,) P(harmful) -> macro-F1, harmful-class F1, ROC-AUC; for a
    one-class set, the detection rate (harmful only) or false-positive rate (safe only)."""
    from sklearn.metrics import f1_score, roc_auc_score

    y, pred, score = (np.asarray(a) for a in (y, pred, score))
    out = {"n": int(len(y)), "harmful": int(y.sum())}
    if y.min() == y.max():
        out["detection_rate" if y[0] == 1 else "false_positive_rate"] = float(pred.mean())
        return out
    out["f1"] = float(f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0))
    out["harmful_f1"] = float(f1_score(y, pred, pos_label=1, zero_division=0))
    out["roc_auc"] = float(roc_auc_score(y, score))
    return out


def summarise(per_dataset: dict, datasets: list[str]) -> dict:
    """Mean over the datasets that have both classes, of f1, harmful_f1 and roc_auc."""
    both = [d for d in datasets if d in per_dataset and "f1" in per_dataset[d]]
    return {k: float(np.mean([per_dataset[d][k] for d in both])) for k in ("f1", "harmful_f1", "roc_auc")} if both else {}


def time_per_text(score_fn, texts: list, batch_size: int, single_texts: int = 8) -> float:
    """Milliseconds per text to score texts in batches of `batch_size`, after a two-text warm-up.

    Batch 1 times the first `single_texts` texts one by one; larger batches time all `texts`."""
    score_fn(texts[:2])
    texts = texts[:single_texts] if batch_size == 1 else texts
    start = time.perf_counter()
    for s in range(0, len(texts), batch_size):
        score_fn(texts[s:s + batch_size])
    return 1000.0 * (time.perf_counter() - start) / len(texts)


class FeatureLatency:
    """Latency of feature systems = backbone forward up to the deepest layer a system reads
    (pooling every layer up to it) + the system's own scoring of those features.

    The forward is timed once per depth and shared by the systems of that depth, which keeps the
    number of backbone passes small on a busy CPU; the head is timed on the features it gets.
    """

    def __init__(self, run, texts: list[str]):
        self.run, self.texts = run, texts
        self.forward: dict[int, dict[str, float]] = {}
        self.features: dict[int, np.ndarray] = {}
        self.tokens: dict | None = None

    def token_stats(self, lf) -> dict:
        """Token lengths of the timed texts (after truncation) and how much a batch of 32 pads."""
        lengths = np.array([len(ids) for ids in lf.tokenize(self.texts)])
        batches = [lengths[s:s + 32] for s in range(0, len(lengths), 32)]
        padded = sum(len(b) * int(b.max()) for b in batches)
        return {"mean": float(lengths.mean()), "max": int(lengths.max()),
                "batch_32_padded_over_real": float(padded / lengths.sum())}

    def __call__(self, system) -> dict[str, float]:
        depth = max(system.layers)
        if depth not in self.forward:
            featurize = self.run.featurizer(list(range(depth + 1)))
            if self.tokens is None:
                self.tokens = self.token_stats(featurize.layer_features)
            self.forward[depth] = {f"batch_{b}": time_per_text(featurize, self.texts, b) for b in (1, 32)}
            self.features[depth] = featurize(self.texts)                       # (n, L, d)
        X = self.features[depth]
        head = {f"batch_{b}": time_per_text(lambda idx: system.proba_features(X[idx]), list(range(len(X))), b)
                for b in (1, 32)}
        return {k: self.forward[depth][k] + head[k] for k in head}


def git_commit() -> str:
    if not (SOURCE / "pyproject.toml").is_file():  # an installed package: a .venv inside some repo is not ours
        return "unknown (installed package, not a checkout)"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SOURCE, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=SOURCE,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


# --------------------------------------------------------------------------- the report

def build_report(cfg) -> dict:
    """The comparison report of a ReportConfig's run: fit and score every system on the run's split
    ids, write the report folder; returns the report."""
    from siren.evaluation.baselines import SYSTEMS, RunData, Unavailable, fit_systems

    started = time.perf_counter()
    run = RunData(cfg.run, extra_datasets=cfg.extra_datasets, cache_dir=cfg.cache_dir, device=cfg.device,
                  batch_tokens=cfg.batch_tokens)
    out_dir = Path(cfg.out) if cfg.out else Path("reports") / run.run_dir.resolve().name
    out_dir.mkdir(parents=True, exist_ok=True)
    n_trials = int(cfg.n_trials or run.train_cfg.n_trials)
    n_folds = int(cfg.n_folds or run.train_cfg.n_folds)
    systems_wanted = cfg.systems or list(SYSTEMS)
    everything = run.datasets + run.extras
    needs_features = any(s != "tfidf_lr" and s != "profanity_check" for s in systems_wanted)
    t = time.perf_counter()
    if needs_features:
        run.ensure_features()
    features_seconds = time.perf_counter() - t

    rng = np.random.default_rng(run.seed)
    pool = [r for d in run.datasets for r in run.splits[(d, "test")].rows]
    sample = [pool[i] for i in rng.choice(len(pool), size=min(cfg.latency_texts, len(pool)), replace=False)]
    sample_texts = [r["text"] for r in sample]

    systems = fit_systems(run, systems_wanted, seed=run.seed, n_trials=n_trials, n_folds=n_folds,
                          all_neurons_limit=cfg.all_neurons_limit)
    feature_latency = FeatureLatency(run, sample_texts)
    entries, curves, all_scores = {}, {}, {}
    for system in systems:
        if isinstance(system, Unavailable):
            entries[system.name] = {"status": "unavailable", "reason": system.reason}
            continue
        entries[system.name], curves[system.name], all_scores[system.name] = score_system(
            system, run, everything, sample_texts, feature_latency)
    for arg in cfg.guards:
        entries.update(score_guard(arg, run, everything, sample, cfg, curves))

    report = {
        "run": str(run.run_dir),
        "name": out_dir.name,
        **setup_record(run, needs_features, n_trials, n_folds),
        "config": cfg.as_dict(),
        "latency_texts": len(sample_texts),
        "latency_tokens": feature_latency.tokens,
        "systems": entries,
        **cross_checks(run, entries, all_scores),
        "git_commit": git_commit(),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores visible, torch threads "
                   f"{_torch_threads()}",
        "features_seconds": round(features_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "command": os.environ.get("SIREN_REPORT_COMMAND"),
    }
    if needs_features:   # the guard's harm categories beside a TF-IDF one-vs-rest baseline, when it has a head
        from siren.evaluation.categories import categories_for_run

        report["categories"] = categories_for_run(run)
    write_report(out_dir, report, curves, run)
    report["out_dir"] = str(out_dir)
    return report


def score_system(system, run, everything: list[str], sample_texts: list[str], feature_latency) -> tuple:
    """One trained system on every test set -> (its report entry, (y, score) pooled over the run's
    datasets for the ROC plot, its scores on every test row in order)."""
    per_dataset, pooled, all_scores_of = {}, ([], []), []
    for name in everything:
        s = run.splits[(name, "test")]
        score = (system.proba_text(s.texts) if system.kind == "text"
                 else system.proba_features(run.X(name, "test")))
        score = np.asarray(score, dtype=np.float64)
        all_scores_of.append(score)
        per_dataset[name] = metrics(s.y, (score >= THRESHOLD).astype(np.int64), score)
        if name in run.datasets:
            pooled[0].append(s.y)
            pooled[1].append(score)
    if system.kind == "text":
        latency = {f"batch_{b}": time_per_text(system.proba_text, sample_texts, b) for b in (1, 32)}
    else:
        latency = feature_latency(system)
    entry = {"status": "ok", "datasets": per_dataset, "average": summarise(per_dataset, run.datasets),
             "train_seconds": system.train_seconds, "latency_ms_per_text": latency,
             "n_features": system.n_features, "n_params": system.n_params, "kind": system.kind,
             "layers": system.layers, "notes": system.notes, "info": system.info}
    print(f"[siren] report: {system.name}: average macro-F1 {entry['average'].get('f1', float('nan')):.4f}",
          flush=True)
    return entry, (np.concatenate(pooled[0]), np.concatenate(pooled[1])), np.concatenate(all_scores_of)


def cross_checks(run, entries: dict, all_scores: dict) -> dict:
    """`siren_matches_run_results` (the siren row against the run's own test F1) and
    `uniform_weights_vs_siren` (what the layer weights change), each None when not measurable."""
    siren_check = None
    if "siren" in entries and entries["siren"]["status"] == "ok":
        ours = {d: entries["siren"]["datasets"][d]["f1"] for d in run.datasets}
        siren_check = max(abs(ours[d] - run.results["test_f1"][d]) for d in run.datasets)
    weighting = None
    if "uniform_weights" in all_scores and "siren" in all_scores:
        # The head standardises every input column; with scale_by_layer_weight the run then
        # multiplies each column by its layer weight, else the weights cancel and only the two
        # separate head searches differ.
        diff = np.abs(all_scores["uniform_weights"] - all_scores["siren"])
        weighting = {"max_abs_score_difference": float(diff.max()),
                     "rows_with_different_decision": int(((all_scores["uniform_weights"] >= THRESHOLD)
                                                          != (all_scores["siren"] >= THRESHOLD)).sum()),
                     "rows": int(len(diff)),
                     "scale_by_layer_weight": bool(run.cfg.get("scale_by_layer_weight"))}
    return {"siren_matches_run_results": siren_check, "uniform_weights_vs_siren": weighting}


def setup_record(run, needs_features: bool, n_trials: int, n_folds: int) -> dict:
    """The report's setup fields: backbone, data, caps, seed, the run's settings."""
    from siren.backbones import resolve

    source = resolve(run.model)
    everything = run.datasets + run.extras
    return {
        "model": run.model,
        "backbone": {"model_id": source.model_id, "revision": source.revision, "kind": source.kind,
                     "num_layers": run.num_layers if needs_features else None,
                     "hidden_size": run.hidden_size if needs_features else None,
                     "dtype": run.guard_config.get("siren", {}).get("dtype") or run.cfg.get("dtype")},
        "datasets": run.datasets,
        "extra_datasets": run.extras,
        "data_dir": run.split_kw["data_dir"] or os.environ.get("SIREN_DATA_DIR"),
        "max_per_split": run.split_kw["max_per_split"],
        "seed": run.seed,
        "val_ratio": run.split_kw["val_ratio"],
        "test_rows": {d: int(len(run.splits[(d, "test")].y)) for d in everything},
        "n_trials": n_trials,
        "n_folds": n_folds,
        "run_config": {k: run.cfg.get(k) for k in ("c_values", "probe_tol", "probe_c_rule", "probe_refit",
                                                   "selection_thresholds", "pooling_types", "n_trials", "n_folds",
                                                   "max_epochs", "patience", "max_length")},
        "decision_threshold": THRESHOLD,
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def score_guard(arg: str, run, everything: list[str], sample: list[dict], cfg, curves: dict) -> dict:
    """Score every test row with one guard model -> {system name: entry} (one per reading)."""
    from siren.evaluation.guard_models import GuardScorer, load_guard_model, spec_for

    spec = spec_for(arg)
    modes = list(spec.family.modes)
    names = {m: f"guard:{spec.name}" + (f" ({m})" if len(modes) > 1 else "") for m in modes}
    print(f"[siren] report: guard {spec.name} ({spec.model_id}) ...", flush=True)
    try:
        model, tokenizer = load_guard_model(spec, device=cfg.guard_device)
    except SirenError as err:
        return {n: {"status": "unavailable", "reason": str(err)} for n in names.values()}
    scorer = GuardScorer(model, tokenizer, spec.family, max_length=run.max_length)
    start = time.perf_counter()
    outputs = {d: scorer.score(run.splits[(d, "test")].rows, batch_size=cfg.guard_batch_size) for d in everything}
    seconds = time.perf_counter() - start
    latency = {f"batch_{b}": time_per_text(lambda rows, b=b: scorer.score(rows, batch_size=b), sample, b)
               for b in (1, 32)}
    n_params = int(sum(p.numel() for p in model.parameters()))
    entries = {}
    for mode, name in names.items():
        per_dataset, pooled = {}, ([], [])
        for d in everything:
            o, y = outputs[d], run.splits[(d, "test")].y
            pred, score = o.predictions(mode, spec.family), o.scores(mode, spec.family)
            per_dataset[d] = {**metrics(y, pred, score), "unparsed": o.n_unparsed}
            if d in run.datasets:
                pooled[0].append(y)
                pooled[1].append(score)
        curves[name] = (np.concatenate(pooled[0]), np.concatenate(pooled[1]))
        unparsed = sum(outputs[d].n_unparsed for d in everything)
        notes = [f"{spec.model_id}, its own chat template; verdict = parsed output ({mode}); "
                 f"{unparsed} of {sum(len(outputs[d].verdicts) for d in everything)} outputs unparsed (not flagged)"]
        notes += sorted({n for o in outputs.values() for n in o.notes})
        entries[name] = {"status": "ok", "datasets": per_dataset, "average": summarise(per_dataset, run.datasets),
                         "train_seconds": None, "latency_ms_per_text": latency, "n_features": None,
                         "n_params": n_params, "kind": "guard", "notes": notes,
                         "info": {"scoring_seconds": round(seconds, 1), "unparsed": unparsed}}
    del model
    return entries
