"""Does the answer's current token say more than the answer's mean? (streaming verdicts, round 3)

Qwen3Guard-Stream judges each answer token from that token's own hidden state; our answer verdict
reads the mean of the answer's tokens so far. This compares, on the selected neurons of a trained
guard (its `mlp_mean` outputs, times its layer weights), three readings of an answer prefix of t
tokens, and their concatenations:

- mean:  the mean of the t answer tokens' outputs (the product's answer pool),
- last:  the t-th token's outputs alone (what a per-token classifier reads),
- ema:   an exponential moving average of the token outputs (alpha 1/8: about the last 8 tokens).

Each is fitted as the product's answer head is (siren.pipeline.answer: `LogisticHead`, C 3e-4,
finished answers plus prefixes at 8/16/32/64 tokens, harmful prefixes under 16 tokens left out)
and judged by 3-fold CV on the train + validation response rows (beavertails, safe_rlhf): the
finished answers' macro-F1 at 0.5 (mean of the two datasets) and the out-of-fold streams'
detection at the threshold that flags 15% of the safe streams (scored every 4 answer tokens and
at the last, debounce 1). No test row is read.

    python experiments/streaming_verdicts/token_states.py --guard $WORK/guard --data_dir $WORK/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from experiments.streaming_verdicts.pools import GuardReader, forward_all, prefix_points

CUTS = (8, 16, 32, 64)
HARMFUL_MIN = 16
EMA_ALPHA = 1 / 8


def row_readings(h_sel: np.ndarray, is_ans: np.ndarray) -> dict:
    """Readings of one row at its stream points. h_sel (T, k): per-token selected outputs (weighted);
    -> {"t": (p,) answer tokens at each point, "mean"/"last"/"ema": (p, k) float16}."""
    a = h_sel[is_ans]
    pts = prefix_points(len(a))
    if not pts:
        return {"t": np.zeros(0, np.int64)}
    idx = np.asarray(pts) - 1
    mean = np.cumsum(a, axis=0)[idx] / np.asarray(pts, dtype=np.float32)[:, None]
    ema = np.empty_like(a)
    ema[0] = a[0]
    for i in range(1, len(a)):
        ema[i] = (1 - EMA_ALPHA) * ema[i - 1] + EMA_ALPHA * a[i]
    return {"t": np.asarray(pts), "mean": mean.astype(np.float16), "last": a[idx].astype(np.float16),
            "ema": ema[idx].astype(np.float16)}


def read_rows(guard: Path, data_dir: Path, limit: int | None = None) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """(readings per row, labels (n,), dataset index (n,)) of the train + validation response rows."""
    reader = GuardReader(guard)
    out, labels, source = [], [], []
    for k, name in enumerate(("beavertails", "safe_rlhf")):
        rows = [json.loads(x) for s in ("train", "validation")
                for x in open(data_dir / name / f"{s}.jsonl") if x.strip()][:limit]
        enc = reader.pairs(rows)
        out += forward_all(reader.hooked, [ids for ids, _m in enc], lambda i, h: row_readings(reader.selected(h), enc[i][1]))
        labels += [int(r["label"]) for r in rows]
        source += [k] * len(rows)
        print(f"{name}: {len(rows)} rows read", flush=True)
    return out, np.asarray(labels), np.asarray(source)


def features(r: dict, kinds: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([r[k].astype(np.float32) for k in kinds], axis=1)


def evaluate(readings, y, src, kinds: tuple[str, ...], C: float, seed: int = 0) -> dict:
    """Out-of-fold finished-answer F1 and stream detection at 15% false alarms for one reading."""
    from siren.pipeline.answer import LogisticHead

    ok = np.array([len(r["t"]) > 0 for r in readings])
    strata = src * 2 + y
    oof_final = np.full(len(y), np.nan)
    oof_peak = np.full(len(y), np.nan)
    for tr, te in StratifiedKFold(3, shuffle=True, random_state=seed).split(np.zeros(len(y)), strata):
        X, Y = [], []
        for i in tr[ok[tr]]:
            r, f = readings[i], features(readings[i], kinds)
            keep = [len(r["t"]) - 1] + [j for j, t in enumerate(r["t"]) if t in CUTS and t != r["t"][-1]
                                        and not (y[i] == 1 and t < HARMFUL_MIN)]
            X.append(f[keep])
            Y += [y[i]] * len(keep)
        head = LogisticHead(C, seed).fit(np.concatenate(X), np.asarray(Y), np.ones(len(Y)))
        for i in te[ok[te]]:
            p = head.proba(features(readings[i], kinds))
            oof_final[i], oof_peak[i] = p[-1], p.max()
    f1 = np.mean([f1_score(y[(src == k) & ok], oof_final[(src == k) & ok] >= 0.5, average="macro") for k in (0, 1)])
    safe, harm = oof_peak[(y == 0) & ok], oof_peak[(y == 1) & ok]
    thr = np.quantile(safe, 0.85)
    return {"reading": "+".join(kinds), "C": C, "cv_f1_finished": float(f1),
            "threshold_15pct": float(thr), "false_alarms": float((safe > thr).mean()),
            "detection_at_15pct": float((harm > thr).mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guard", type=Path, required=True)
    ap.add_argument("--data_dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="a JSON file for the table (optional)")
    ap.add_argument("--limit", type=int, default=None, help="rows per dataset (a smoke run)")
    args = ap.parse_args()
    readings, y, src = read_rows(args.guard, args.data_dir, args.limit)
    grid = [(("mean",), 3e-4), (("last",), 3e-4), (("last",), 3e-3), (("ema",), 3e-4), (("ema",), 3e-3),
            (("mean", "last"), 3e-4), (("mean", "ema"), 3e-4)]
    print("| reading | C | CV F1 (finished, 0.5) | CV detection at 15% stream false alarms |\n|---|---|---:|---:|")
    table = []
    for kinds, C in grid:
        res = evaluate(readings, y, src, kinds, C)
        table.append(res)
        print(f"| {res['reading']} | {C:g} | {res['cv_f1_finished']:.3f} | {res['detection_at_15pct']:.3f} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
