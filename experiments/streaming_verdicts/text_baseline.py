"""How much a bag of words tells about the answer-level labels: TF-IDF (word 1-2 grams) + logistic
regression on the response rows of beavertails and safe_rlhf, 3-fold stratified CV over their
train + validation rows (the rows the answer verdict was chosen on; no test row is read).

A diagnostic beside section 1 of reports/streaming_verdicts: if a lexical model lands where every
head on the backbone's features lands (0.70-0.73 CV F1), the labels of these rows, not the head,
bound the finished-answer F1.

    python experiments/streaming_verdicts/text_baseline.py --data_dir $WORK/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

DATASETS = ("beavertails", "safe_rlhf")
CS = (0.3, 1.0, 3.0, 10.0)


def rows(data_dir: Path, name: str) -> list[dict]:
    out = []
    for split in ("train", "validation"):
        with open(data_dir / name / f"{split}.jsonl", encoding="utf-8") as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


def cv_f1(texts: list[str], y: np.ndarray, C: float, seed: int) -> float:
    """Macro-F1 of the out-of-fold predictions at 0.5 (label-balanced LR)."""
    pred = np.zeros(len(y), dtype=int)
    for tr, te in StratifiedKFold(3, shuffle=True, random_state=seed).split(texts, y):
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([texts[i] for i in tr])
        clf = LogisticRegression(C=C, max_iter=3000, class_weight="balanced")
        clf.fit(vec.transform([texts[i] for i in tr]), y[tr])
        pred[te] = clf.predict(vec.transform([texts[i] for i in te]))
    return float(f1_score(y, pred, average="macro"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    print("| text read | C | " + " | ".join(DATASETS) + " | mean |")
    print("|---|---:|" + "---:|" * (len(DATASETS) + 1))
    for what in ("response", "text"):
        for C in CS:
            f1s = []
            for name in DATASETS:
                rs = rows(Path(args.data_dir), name)
                f1s.append(cv_f1([r[what] for r in rs], np.array([int(r["label"]) for r in rs]), C, args.seed))
            label = "answer alone" if what == "response" else "prompt + answer"
            print(f"| {label} | {C:g} | " + " | ".join(f"{x:.3f}" for x in f1s) + f" | {np.mean(f1s):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
