"""Compare two evaluated guards on the same test rows: macro-F1 per dataset and on average, the
difference B - A, and its 95% paired bootstrap interval.

Reads, from each guard folder, what `siren eval` (test/eval_general_siren.sh) wrote there:
`test_scores.jsonl` (one line per test row: dataset, id, label, score) and `eval_results.json`
(the decision threshold its metrics used). Writes a table to stdout and, with `--out`, JSON.

Why paired: each guard's own interval (`f1_ci95` in eval_results.json) is about +-0.03 on the
average over a few hundred rows per dataset, but two guards scored on the same rows err on many
of the same rows, so their difference varies much less than either score. Resample b draws the
same rows for both guards (the k-th dataset of the file with seed + k), and the
interval is that of the b-th differences. A difference whose interval excludes 0 is one these
rows can tell apart; the share of resamples in which B beats A is printed beside it.

Usage: python experiments/compare_guards.py GUARD_A GUARD_B [--resamples 1000] [--seed 0] [--out c.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from siren.errors import SirenError
from siren.metrics import bootstrap_macro_f1, macro_f1, percentile_interval


def read_scores(folder: Path) -> tuple[dict[str, dict[str, tuple[int, float]]], float]:
    """A guard folder -> ({dataset: {id: (label, score)}}, decision threshold)."""
    rows_file, report_file = folder / "test_scores.jsonl", folder / "eval_results.json"
    for f in (rows_file, report_file):
        if not f.is_file():
            raise SirenError(f"{f} is missing: evaluate the guard first (`siren eval --guard {folder}`, "
                             "test/eval_general_siren.sh), with a version that writes test_scores.jsonl")
    rows: dict[str, dict[str, tuple[int, float]]] = {}
    for n, line in enumerate(rows_file.read_text().splitlines(), start=1):
        try:
            r = json.loads(line)
            rows.setdefault(str(r["dataset"]), {})[str(r["id"])] = (int(r["label"]), float(r["score"]))
        except (ValueError, KeyError, TypeError) as err:
            raise SirenError(f"{rows_file}, line {n}: expected an object with dataset, id, label, score "
                             f"({err}); write the file again with `siren eval --guard {folder}`") from None
    return rows, float(json.loads(report_file.read_text())["decision_threshold"])


def compare(a: Path, b: Path, *, resamples: int = 1000, seed: int = 0) -> dict:
    """Two guard folders -> the comparison (JSON-ready). Refuses rows that differ between them."""
    rows_a, thr_a = read_scores(a)
    rows_b, thr_b = read_scores(b)
    if set(rows_a) != set(rows_b):
        raise SirenError(f"the two evaluations scored different datasets: {sorted(rows_a)} in {a}, "
                         f"{sorted(rows_b)} in {b}; evaluate both on the same --datasets")
    out = {"a": str(a), "b": str(b), "threshold_a": thr_a, "threshold_b": thr_b, "resamples": resamples,
           "seed": seed, "level": 0.95, "datasets": {}}
    diffs = []
    for k, name in enumerate(rows_a):
        ra, rb = rows_a[name], rows_b[name]
        if set(ra) != set(rb):
            raise SirenError(f"{name}: the two evaluations scored different rows ({len(set(ra) ^ set(rb))} ids in one "
                             "only): compare guards trained and evaluated on the same splits")
        ids = list(ra)
        y = np.array([ra[i][0] for i in ids])
        if any(rb[i][0] != ra[i][0] for i in ids):
            raise SirenError(f"{name}: a row has another label in {b} than in {a}: the data differ")
        if y.min() == y.max():      # harmful-only sets have no macro-F1 (siren eval reports recall)
            continue
        pa = np.array([ra[i][1] for i in ids]) >= thr_a
        pb = np.array([rb[i][1] for i in ids]) >= thr_b
        # the same seed draws the same rows for both guards: the replicates are paired
        d = (bootstrap_macro_f1(y, pb, n_boot=resamples, boot_seed=seed + k)
             - bootstrap_macro_f1(y, pa, n_boot=resamples, boot_seed=seed + k))
        diffs.append(d)
        f1_a, f1_b = macro_f1(y, pa), macro_f1(y, pb)
        out["datasets"][name] = {"n": len(ids), "f1_a": f1_a, "f1_b": f1_b, "diff": f1_b - f1_a,
                                 "diff_ci95": list(percentile_interval(d)),
                                 "share_b_better": float(np.mean(d > 0))}
    if not diffs:
        raise SirenError("no dataset with both labels in its test rows: nothing to compare")
    per = out["datasets"].values()
    avg = np.mean(diffs, axis=0)
    out["average"] = {"f1_a": float(np.mean([e["f1_a"] for e in per])),
                      "f1_b": float(np.mean([e["f1_b"] for e in per])),
                      "diff": float(np.mean([e["diff"] for e in per])),
                      "diff_ci95": list(percentile_interval(avg)),
                      "share_b_better": float(np.mean(avg > 0))}
    return out


def table(r: dict) -> str:
    lines = [f"A: {r['a']} (threshold {r['threshold_a']:g})", f"B: {r['b']} (threshold {r['threshold_b']:g})",
             f"{'dataset':20s} {'n':>5s} {'F1 A':>7s} {'F1 B':>7s} {'B - A':>8s}  {'95% paired interval':>20s} "
             f"{'B better':>8s}"]
    for name, e in [*r["datasets"].items(), ("average", r["average"])]:
        n = f"{e['n']:5d}" if "n" in e else f"{'':5s}"
        lo, hi = e["diff_ci95"]
        lines.append(f"{name:20s} {n} {e['f1_a']:7.4f} {e['f1_b']:7.4f} {e['diff']:+8.4f}  "
                     f"{f'{lo:+.4f} to {hi:+.4f}':>20s} {e['share_b_better']:8.1%}")
    lines.append(f"({r['resamples']} paired bootstrap resamples of each dataset's test rows, seed {r['seed']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("guard_a", type=Path)
    ap.add_argument("guard_b", type=Path)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the comparison as JSON here")
    a = ap.parse_args(argv)
    try:
        r = compare(a.guard_a, a.guard_b, resamples=a.resamples, seed=a.seed)
    except SirenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(r))
    if a.out:
        from siren.fileio import atomic_write_json

        atomic_write_json(a.out, r)
    return 0


if __name__ == "__main__":
    from siren.errors import run_main

    raise SystemExit(run_main(main, "compare_guards.py"))
