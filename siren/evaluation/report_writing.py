"""Writing `siren report`'s outputs (see `siren.evaluation.report`): RESULTS.md, results.json,
roc.png and the copied layers.png, and the summary printed at the end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from siren.fileio import load_yaml
from siren.paths import config_file

PAPER_PATH = config_file("paper_results.yaml")
NOT_COMPARABLE = ("These numbers come from the offline copies of the datasets, re-split here (seeded, stratified, "
                  "disjoint) and capped; they are not the paper's splits or sizes, so they are **not comparable "
                  "with the paper's table**.")


def load_paper() -> dict:
    return load_yaml(PAPER_PATH.read_text(encoding="utf-8"), str(PAPER_PATH))


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


def category_lines(report: dict) -> list[str]:
    """The harm-category table (the guard's head beside the TF-IDF baseline), when there is one."""
    if not report.get("categories"):
        return []
    from siren.evaluation.categories import markdown as category_markdown

    return ["## Harm categories", ""] + category_markdown(report["categories"]) + [""]


def markdown(report: dict) -> str:
    """RESULTS.md: setup, the metric tables, cost, systems not run, the paper's format, plots."""
    systems = report["systems"]
    ok = {n: e for n, e in systems.items() if e["status"] == "ok"}
    lines = setup_lines(report) + category_lines(report) + metric_tables(report, ok) + cost_lines(report, ok)
    missing = {n: e for n, e in systems.items() if e["status"] != "ok"}
    if missing:
        lines += ["## Systems not run here", ""] + [f"- **{n}**: {e['reason']}" for n, e in missing.items()] + [""]
    lines += paper_section(report)
    lines += ["## Plots", "", "Probe validation F1 and selected neurons per layer (the run's):", "",
              "![layers](layers.png)", "", "ROC curves on the pooled test rows of the training datasets:", "",
              "![roc](roc.png)", ""]
    return "\n".join(lines)


def setup_lines(report: dict) -> list[str]:
    """The title, the not-comparable note and the Setup section."""
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
    return lines + [""]


def metric_tables(report: dict, ok: dict) -> list[str]:
    """Macro-F1, harmful-class F1 and ROC-AUC per test set; detection rate on harmful-only sets."""
    ds, extras = report["datasets"], report["extra_datasets"]
    lines: list[str] = []

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
    return lines


def cost_lines(report: dict, ok: dict) -> list[str]:
    """The Cost section: training time, latency, features and parameters per system."""
    tok = report.get("latency_tokens")
    tokens_note = "" if not tok else (
        f" The timed texts have {tok['mean']:.0f} tokens on average and at most {tok['max']}; a batch of 32 is padded "
        f"to its longest text ({tok['batch_32_padded_over_real']:.1f}x the real tokens here), so on a CPU a batch "
        "of 32 can cost more per text than one text at a time.")
    lines = ["## Cost", "",
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
    return lines


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

    from siren.fileio import save_roc_figure

    fig, ax = plt.subplots(figsize=(6, 5.5))
    for name, (y, s) in curves.items():
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=2 if name == "siren" else 1.2, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    save_roc_figure(fig, ax, f"{report['model']}: test rows of {len(report['datasets'])} datasets, pooled", path)


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
