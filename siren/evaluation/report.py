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

Every system is scored at its own decision rule: P(harmful) >= 0.5 for the probability
systems, the parsed verdict for guard models (unparsed outputs are not flagged, and counted).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from siren.errors import SirenError

REPO = Path(__file__).resolve().parents[2]
PAPER_PATH = REPO / "configs" / "paper_results.yaml"
THRESHOLD = 0.5
NOT_COMPARABLE = ("These numbers come from the offline copies of the datasets, re-split here (seeded, stratified, "
                  "disjoint) and capped; they are not the paper's splits or sizes, so they are **not comparable "
                  "with the paper's table**.")


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
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def load_paper() -> dict:
    import yaml

    with open(PAPER_PATH) as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------- the report

def build_report(cfg) -> dict:
    """The comparison report of a ReportConfig's run; writes and returns it."""
    from siren.evaluation.baselines import SYSTEMS, RunData, Unavailable, fit_systems

    started = time.perf_counter()
    run = RunData(cfg.run, extra_datasets=cfg.extra_datasets, cache_dir=cfg.cache_dir, device=cfg.device,
                  batch_tokens=cfg.batch_tokens)
    out_dir = Path(cfg.out) if cfg.out else REPO / "reports" / run.run_dir.resolve().name
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
        curves[system.name] = (np.concatenate(pooled[0]), np.concatenate(pooled[1]))
        all_scores[system.name] = np.concatenate(all_scores_of)
        if system.kind == "text":
            latency = {f"batch_{b}": time_per_text(system.proba_text, sample_texts, b) for b in (1, 32)}
        else:
            latency = feature_latency(system)
        entries[system.name] = {"status": "ok", "datasets": per_dataset, "average": summarise(per_dataset, run.datasets),
                                "train_seconds": system.train_seconds, "latency_ms_per_text": latency,
                                "n_features": system.n_features, "n_params": system.n_params, "kind": system.kind,
                                "layers": system.layers, "notes": system.notes, "info": system.info}
        print(f"[siren] report: {system.name}: average macro-F1 {entries[system.name]['average'].get('f1', float('nan')):.4f}",
              flush=True)

    for arg in cfg.guards:
        entries.update(score_guard(arg, run, everything, sample, cfg, curves))

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

    from siren.backbones import resolve

    source = resolve(run.model)
    report = {
        "run": str(run.run_dir),
        "name": out_dir.name,
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
        "run_config": {k: run.cfg.get(k) for k in ("c_values", "probe_tol", "probe_c_rule", "probe_refit", "selection_thresholds", "pooling_types", "n_trials", "n_folds",
                                                   "max_epochs", "patience", "max_length")},
        "decision_threshold": THRESHOLD,
        "config": cfg.as_dict(),
        "latency_texts": len(sample_texts),
        "latency_tokens": feature_latency.tokens,
        "systems": entries,
        "siren_matches_run_results": siren_check,
        "uniform_weights_vs_siren": weighting,
        "git_commit": git_commit(),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores visible, torch threads "
                   f"{_torch_threads()}",
        "features_seconds": round(features_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "command": os.environ.get("SIREN_REPORT_COMMAND"),
    }
    write_report(out_dir, report, curves, run)
    report["out_dir"] = str(out_dir)
    return report


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


# --------------------------------------------------------------------------- writing

def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ms(x) -> str:
    return "–" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.0f}")


def _count(n) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.2f} M" if n >= 1e6 else (f"{n / 1e3:.1f} k" if n >= 1e4 else str(n))


def _secs(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def markdown(report: dict) -> str:
    systems = report["systems"]
    ok = {n: e for n, e in systems.items() if e["status"] == "ok"}
    ds, extras = report["datasets"], report["extra_datasets"]
    lines = [f"# SIREN and the comparison systems: {report['model']}, run `{report['name']}`", ""]
    if report["data_dir"]:
        lines += [f"> {NOT_COMPARABLE}", ""]
    caps = report["max_per_split"]
    lines += [
        "## Setup", "",
        f"- **Run**: `{report['run']}` (every system is trained and evaluated on its split ids, `splits.json`)",
        f"- **Backbone**: `{report['model']}` ({report['backbone']['model_id']}, revision "
        f"{report['backbone']['revision']}; {report['backbone']['num_layers']} layers, hidden "
        f"{report['backbone']['hidden_size']}), forward dtype {report['backbone']['dtype']}",
        f"- **Data**: {report['data_dir'] or 'the Hugging Face Hub'}; training datasets {', '.join(ds)}"
        + (f"; harmful-only test sets {', '.join(extras)}" if extras else ""),
        f"- **Caps** (rows per split and dataset, train/validation/test): {caps if caps else 'none'}; "
        f"validation share {report['val_ratio']}; test rows: "
        + ", ".join(f"{d} {n}" for d, n in report["test_rows"].items()),
        f"- **Seed**: {report['seed']}; head search for the MLP systems: {report['n_trials']} trials x "
        f"{report['n_folds']} folds (the run's settings: {json.dumps(report['run_config'])})",
        f"- **Decision rule**: P(harmful) >= {report.get('decision_threshold', report.get('threshold'))} (guard models: their parsed verdict)",
        f"- **Code**: git commit {report['git_commit']}",
        f"- **Machine**: {report['machine']}; report written {report['created']} in {report['seconds']:.0f} s",
    ]
    if report.get("command"):
        lines.append(f"- **Command**: `{report['command']}`")
    if report.get("siren_matches_run_results") is not None:
        lines.append(f"- The `siren` row rescored from the cache differs from the run's `results.json` test F1 by at "
                     f"most {report['siren_matches_run_results']:.2e}")
    w = report.get("uniform_weights_vs_siren")
    if w:
        lines.append(f"- `uniform_weights` vs `siren` on all {w['rows']} test rows: scores differ by at most "
                     f"{w['max_abs_score_difference']:.2e}, decisions on {w['rows_with_different_decision']} rows. "
                     + ("The run's head multiplies each standardised input by its layer's weight "
                        "(scale_by_layer_weight); `uniform_weights` uses the same neurons without it, with its own "
                        "head search, so the difference mixes the weighting with search noise."
                        if w.get("scale_by_layer_weight") else
                        "The head standardises each input column before training, so a constant factor per layer "
                        "cancels; what is left comes from the two separate head searches."))
    lines.append("")

    def table(title, key, names, note=None):
        out = [f"## {title}", ""] + ([note, ""] if note else [])
        out.append("| system | " + " | ".join(names) + " | **Avg.** |")
        out.append("|---|" + "---:|" * (len(names) + 1))
        for n, e in ok.items():
            cells = [_pct(e["datasets"].get(d, {}).get(key)) for d in names]
            out.append(f"| {n} | " + " | ".join(cells) + f" | **{_pct(e['average'].get(key))}** |")
        return out + [""]

    lines += table("Macro-F1 on the test sets (x100)", "f1", ds,
                   "The paper's metric: macro-F1 per dataset, then the mean over datasets.")
    lines += table("Harmful-class F1 on the test sets (x100)", "harmful_f1", ds)
    lines += table("ROC-AUC on the test sets (x100)", "roc_auc", ds)
    if extras:
        lines += ["## Detection rate on the harmful-only sets (%)", "", "| system | " + " | ".join(extras) + " |",
                  "|---|" + "---:|" * len(extras)]
        for n, e in ok.items():
            lines.append(f"| {n} | " + " | ".join(_pct(e["datasets"][d].get("detection_rate")) for d in extras) + " |")
        lines.append("")
    tok = report.get("latency_tokens")
    tokens_note = "" if not tok else (
        f" The timed texts have {tok['mean']:.0f} tokens on average and at most {tok['max']}; a batch of 32 is padded "
        f"to its longest text ({tok['batch_32_padded_over_real']:.1f}x the real tokens here), so on a CPU a batch "
        "of 32 can cost more per text than one text at a time.")
    lines += ["## Cost", "",
              f"Training wall time on this machine (feature extraction, shared by every feature system, not included; "
              f"the feature cache existed or took {report['features_seconds']:.0f} s here). Latency: scoring "
              f"the first 8 of {report['latency_texts']} test texts one at a time (batch 1), and all of them in batches "
              "of 32, per text; for the feature systems the backbone forward up to the deepest layer the system reads "
              "is included (timed once per depth)." + tokens_note + " Parameters: trained ones (frozen backbone not "
              "counted); guard models: all of theirs.", "",
              "| system | train (s) | ms/text, batch 1 | ms/text, batch 32 | input features | parameters | notes |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for n, e in ok.items():
        lat = e["latency_ms_per_text"]
        lines.append(f"| {n} | {_secs(e['train_seconds'])} | {_ms(lat['batch_1'])} | {_ms(lat['batch_32'])} | "
                     f"{_count(e['n_features'])} | {_count(e['n_params'])} | {'; '.join(e['notes'])} |")
    lines.append("")
    missing = {n: e for n, e in systems.items() if e["status"] != "ok"}
    if missing:
        lines += ["## Systems not run here", ""] + [f"- **{n}**: {e['reason']}" for n, e in missing.items()] + [""]
    lines += paper_section(report)
    lines += ["## Plots", "", "Probe validation F1 and selected neurons per layer (the run's):", "",
              "![layers](layers.png)", "", "ROC curves on the pooled test rows of the training datasets:", "",
              "![roc](roc.png)", ""]
    return "\n".join(lines)


def paper_section(report: dict) -> list[str]:
    """The paper's table format (seven datasets, Avg.) with our measured rows, and the authors' table."""
    paper = load_paper()
    cols, pds = paper["columns"], paper["datasets"]
    ok = {n: e for n, e in report["systems"].items() if e["status"] == "ok"}
    lines = ["## In the paper's format", "",
             "Macro-F1 x100 on the paper's seven test sets; `–`: not in this run (offline there is no copy of `aegis2`)"
             ". Avg. is over the datasets measured, so with a `–` it is not the paper's average.", "",
             "| Backbone | Method | " + " | ".join(cols) + " | Avg. |", "|---|---|" + "---:|" * (len(cols) + 1)]
    for n, e in ok.items():
        if n != "siren" and not n.startswith("guard:"):
            continue
        vals = [e["datasets"].get(d, {}).get("f1") for d in pds]
        have = [v for v in vals if v is not None]
        avg = f"{100 * np.mean(have):.1f}" + (f" ({len(have)} of {len(pds)})" if len(have) < len(pds) else "")
        method = "SIREN" if n == "siren" else f"Guard ({n.removeprefix('guard:')})"
        lines.append(f"| {report['model']} (measured here) | {method} | " + " | ".join(_pct(v) for v in vals)
                     + f" | {avg} |")
    if not any(n.startswith("guard:") for n in report["systems"]):
        from siren.evaluation.guard_models import PAPER_GUARD_OF

        family = PAPER_GUARD_OF.get(report["model"])
        lines += ["", "No guard model was scored in this report"
                  + (f" (the paper's guard for this backbone is `{family}`: `--guards {family}`)." if family else
                     f": the paper pairs no guard model with `{report['model']}`; `--guards NAME[=FOLDER]` adds one "
                     "(Qwen3Guard-Gen or Llama Guard 3).")]
    rows = paper["rows"]
    if report["model"] in rows:
        r = rows[report["model"]]
        for method in ("SIREN", "Guard"):
            lines.append(f"| {report['model']} (reported by the authors) | {method} | "
                         + " | ".join(f"{v:.1f}" for v in r[method][:-1]) + f" | {r[method][-1]:.1f} |")
    lines += ["", "### The paper's table, as reported by the authors (not measured here)", "",
              f"Source: {paper['source']}. SIREN against the guard model of the same family "
              "(Qwen3 -> Qwen3Guard-Gen, Llama 3.x -> Llama Guard 3).", "",
              "| Backbone | Method | " + " | ".join(cols) + " | Avg. |", "|---|---|" + "---:|" * (len(cols) + 1)]
    for backbone, r in rows.items():
        for method in ("SIREN", "Guard"):
            lines.append(f"| {backbone} | {method}" + (f" ({r['guard']})" if method == "Guard" else "") + " | "
                         + " | ".join(f"{v:.1f}" for v in r[method]) + " |")
    return lines + [""]


def plot_roc(path: Path, curves: dict, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    from siren.fileio import save_figure

    fig, ax = plt.subplots(figsize=(6, 5.5))
    for name, (y, s) in curves.items():
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=2 if name == "siren" else 1.2, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{report['model']}: test rows of {len(report['datasets'])} datasets, pooled")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_report(out_dir: Path, report: dict, curves: dict, run) -> None:
    from siren.fileio import atomic_write, atomic_write_json, atomic_write_text

    atomic_write_json(out_dir / "results.json", _finite(report))
    plot_roc(out_dir / "roc.png", curves, report)
    layers = run.run_dir / "layers.png"
    if layers.is_file():
        atomic_write(out_dir / "layers.png", layers.read_bytes())
    atomic_write_text(out_dir / "RESULTS.md", markdown(report))


def _finite(obj):
    """NaN/inf -> None, numpy scalars -> Python, recursively (results.json is strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def print_summary(report: dict) -> None:
    ok = {n: e for n, e in report["systems"].items() if e["status"] == "ok"}
    names = report["datasets"]
    print()
    print(f"{'system':34s} " + " ".join(f"{d[:10]:>10s}" for d in names) + f" {'avg F1':>8s} {'train s':>8s} "
          f"{'ms b1':>8s} {'ms b32':>8s}")
    for n, e in ok.items():
        lat = e["latency_ms_per_text"]
        print(f"{n:34s} " + " ".join(f"{e['datasets'][d].get('f1', float('nan')):10.4f}" for d in names)
              + f" {e['average'].get('f1', float('nan')):8.4f} {e['train_seconds'] or 0:8.1f} "
              f"{lat['batch_1']:8.2f} {lat['batch_32']:8.2f}")
    for n, e in report["systems"].items():
        if e["status"] != "ok":
            print(f"{n:34s} not run: {e['reason']}")
    print(f"report: {report['out_dir']}/RESULTS.md ({report['seconds']:.0f} s)")
