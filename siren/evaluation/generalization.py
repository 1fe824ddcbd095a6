"""Reasoning-trace evaluation: `siren eval-think` (behind `test/generalization/eval_gen_siren.sh`).

Reads: a trained guard folder and Qwen3GuardTest's `thinking` split (Hub, or a local copy of
`thinking.jsonl`; `siren.evaluation.qwen3guardtest`): responses of reasoning models, their
reasoning trace inline, labelled Safe / Unsafe.

Writes `think_eval_results.json` (the authors' file name; next to the guard unless `--out`):
per source-model group (GLM, Qwen3, Deepseek) n, harmful, safe, macro-F1, accuracy and the
harmful class's precision and recall at the guard's threshold; their unweighted mean over
groups (the authors' "overall average") and the same metrics pooled over all rows.

As the authors do, the guard reads the response alone (with `--with_prompt`: prompt + "\\n" +
response); inputs longer than the guard's max_length tokens are read up to it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from siren.errors import SirenError

METRICS = ("f1_macro", "accuracy", "precision", "recall")


def binary_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """y, pred (n,) in {0, 1} -> n, harmful, safe, macro-F1, accuracy, precision, recall (harmful
    class; 0 where undefined, as scikit-learn's zero_division=0)."""
    from siren.metrics import macro_f1

    y = np.asarray(y).astype(np.int64).reshape(-1)
    pred = np.asarray(pred).astype(np.int64).reshape(-1)
    if y.shape != pred.shape:
        raise ValueError(f"y has {len(y)} rows, pred has {len(pred)}")
    if len(y) == 0:
        raise ValueError("no rows to score")
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    return {"n": int(len(y)), "harmful": int(y.sum()), "safe": int(len(y) - y.sum()),
            "f1_macro": macro_f1(y, pred), "accuracy": float((y == pred).mean()),
            "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0}


def group_metrics(y: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict:
    """Per group (first-seen order) `binary_metrics`, their unweighted mean ("average") and the
    pooled metrics ("all"). y, pred, groups (n,)."""
    groups = np.asarray(groups)
    names = list(dict.fromkeys(groups.tolist()))
    per = {g: binary_metrics(np.asarray(y)[groups == g], np.asarray(pred)[groups == g]) for g in names}
    return {"groups": per, "average": {k: float(np.mean([per[g][k] for g in names])) for k in METRICS},
            "all": binary_metrics(y, pred)}


def add_arguments(p) -> None:
    from siren import config as cfgmod

    cfgmod.add_flags(p, "eval-think")


def run(args) -> int:
    from siren import config as cfgmod
    from siren.evaluation.eval_checks import check_think_args

    cfg = cfgmod.from_args("eval-think", args)
    check_think_args(cfg)       # every value before the evaluation, not after it
    report = evaluate_thinking(cfg)
    print_table(report)
    return 0


def evaluate_thinking(cfg) -> dict:
    """Score Qwen3GuardTest's thinking rows of an EvalThinkConfig with its guard; writes and returns the report."""
    from siren.evaluation import qwen3guardtest as q3
    from siren.evaluation.streaming import sample
    from siren.features import join_prompt_response
    from siren.fileio import atomic_write_json
    from siren.runtime.loading import open_guard

    rows, dropped = q3.thinking_rows(q3.load_rows(cfg.split, data_file=cfg.data_file))
    rows = sample(rows, cfg.limit, cfg.seed)
    if not rows:
        raise SirenError(f"no Safe/Unsafe rows from the GLM, Qwen3 or Deepseek groups in split {cfg.split!r}")
    folder, guard = open_guard(cfg.model, device=cfg.device, dtype=cfg.dtype)
    threshold = guard.default_threshold if cfg.decision_threshold is None else float(cfg.decision_threshold)
    texts = [join_prompt_response(r["prompt"], r["response"]) if cfg.with_prompt else r["response"] for r in rows]
    start = time.perf_counter()
    scores = guard.predict_proba(texts, batch_size=cfg.batch_size, batch_tokens=cfg.batch_tokens)
    seconds = time.perf_counter() - start
    y = np.array([r["label"] for r in rows])
    metrics = group_metrics(y, (scores >= threshold).astype(np.int64), np.array([r["group"] for r in rows]))
    order = [g for g in q3.GROUPS if g in metrics["groups"]]
    report = {
        "guard": str(folder),
        "decision_threshold": threshold,
        "config": cfg.as_dict() | {"max_length": guard.max_length},
        "left_out": dropped,
        "results": [{"group": g, **metrics["groups"][g]} for g in order],
        "averages": metrics["average"],
        "all": metrics["all"],
        "seconds": round(seconds, 1),
    }
    out = Path(cfg.out) if cfg.out else Path(folder) / "think_eval_results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    report["out"] = str(out)
    return report


def print_table(report: dict) -> None:
    print(f"\n{'group':10s} {'n':>6s} {'harmful':>8s} " + " ".join(f"{m:>10s}" for m in METRICS))
    for r in report["results"]:
        print(f"{r['group']:10s} {r['n']:6d} {r['harmful']:8d} " + " ".join(f"{r[m]:10.4f}" for m in METRICS))
    print(f"{'average':10s} {'':>6s} {'':>8s} " + " ".join(f"{report['averages'][m]:10.4f}" for m in METRICS))
    a = report["all"]
    print(f"{'all':10s} {a['n']:6d} {a['harmful']:8d} " + " ".join(f"{a[m]:10.4f}" for m in METRICS))
    left = report["left_out"]
    if any(left.values()):
        print(f"left out: {left['label']} rows labelled neither Safe nor Unsafe, {left['source']} from other models")
    print(f"results: {report['out']}")
