"""Finished answers through the product's command line: `siren score --jsonl` on the response-level
test rows (prompt + response per line), macro-F1 of the answer verdict (`response.is_harmful`, at
the threshold the guard folder stores) and of the whole text's verdict (`is_harmful`), per dataset.

    python experiments/streaming_verdicts/finished_f1.py --guard $WORK/new --data_dir $WORK/data
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guard", required=True)
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--datasets", nargs="+", default=["beavertails", "safe_rlhf"])
    a = ap.parse_args()
    rows_out = {"answer verdict": [], "whole text": []}
    for name in a.datasets:
        rows = [json.loads(line) for line in open(Path(a.data_dir) / name / "test.jsonl", encoding="utf-8") if line.strip()]
        lines = "".join(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n" for r in rows)
        done = subprocess.run([sys.executable, "-m", "siren", "score", "--model", a.guard, "--jsonl"], input=lines,
                              capture_output=True, text=True, check=True)
        got = [json.loads(line) for line in done.stdout.splitlines()]
        y = [int(r["label"]) for r in rows]
        answer = f1_score(y, [int(g["response"]["is_harmful"]) for g in got], average="macro")
        whole = f1_score(y, [int(g["is_harmful"]) for g in got], average="macro")
        rows_out["answer verdict"].append(answer)
        rows_out["whole text"].append(whole)
        print(f"{name}: {len(rows)} rows; answer verdict at {got[0]['response']['threshold']:.3f}: macro-F1 {answer:.4f}; "
              f"whole text at {got[0]['threshold']:.3f}: {whole:.4f}", flush=True)
    for k, v in rows_out.items():
        print(f"average of the {len(v)} datasets, {k}: {np.mean(v):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
