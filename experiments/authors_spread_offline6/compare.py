"""Our test reads against the authors', as two samples of draws (offline-six rows, analysis only).

Each side's test macro-F1 moves with the draw of its head (ours: the training seed; theirs:
`authors_on_cached_features.py --reseed S`), so one read of each is one draw. This prints
both samples per dataset and the difference of their mean test averages with its standard
error (Welch: each side's variance over its own number of reads).

    python compare.py --ours RESULTS.json ... --theirs RUN.json ...

RESULTS.json: a training run's `results.json` (keys `test_f1`, `test_f1_average`);
RUN.json: `authors_on_cached_features.py`'s output (keys `test_f1_by_dataset`, `test_average`).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def read(path: Path) -> tuple[dict[str, float], float]:
    """One run's per-dataset test macro-F1 and their mean, from either side's file."""
    d = json.loads(path.read_text())
    if "test_f1_by_dataset" in d:
        return d["test_f1_by_dataset"], float(d["test_average"])
    if "test_f1" in d:
        return d["test_f1"], float(d["test_f1_average"])
    raise SystemExit(f"{path}: neither a training run's results.json nor an authors' run file (no test F1 in it)")


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a) - mean(b) and its standard error; a, b: (n_a,), (n_b,) with n >= 2 each."""
    return float(a.mean() - b.mean()), math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ours", nargs="+", type=Path, required=True)
    ap.add_argument("--theirs", nargs="+", type=Path, required=True)
    a = ap.parse_args(argv)
    if len(a.ours) < 2 or len(a.theirs) < 2:
        raise SystemExit("need at least two reads on each side for a standard error")
    ours, theirs = [read(p) for p in a.ours], [read(p) for p in a.theirs]
    names = list(ours[0][0])
    for p, (per, _) in zip(a.ours + a.theirs, ours + theirs):
        if list(per) != names:
            raise SystemExit(f"{p}: datasets {list(per)} differ from {names}")

    columns = {name: ([per[name] for per, _ in ours], [per[name] for per, _ in theirs]) for name in names}
    columns["average"] = ([avg for _, avg in ours], [avg for _, avg in theirs])
    print(f"{'dataset':<20} {'ours: mean (sd)':>17} {'theirs: mean (sd)':>18} {'diff':>8} {'se':>7}")
    for name, (o, t) in columns.items():
        o, t = np.array(o), np.array(t)
        diff, se = welch(o, t)
        print(f"{name:<20} {o.mean():>9.4f} ({o.std(ddof=1):.4f}) {t.mean():>10.4f} ({t.std(ddof=1):.4f}) {diff:>+8.4f} {se:>7.4f}")
    o, t = map(np.array, columns["average"])          # the two sides' test averages, (n_ours,), (n_theirs,)
    wins = int((o[:, None] > t[None, :]).sum())
    print(f"reads: ours {len(o)} ({o.min():.4f}-{o.max():.4f}), theirs {len(t)} ({t.min():.4f}-{t.max():.4f}); "
          f"ours above theirs in {wins} of {len(o) * len(t)} pairs")
    print(f"ours' mean - (theirs' mean + 0.02): {o.mean() - t.mean() - 0.02:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
