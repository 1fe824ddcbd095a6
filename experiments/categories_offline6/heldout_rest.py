"""A larger held-out set for the category evaluation: every row of the two category-annotating
sources that the offline-six protocol left out (neither train, validation nor test there).

The protocol caps each dataset at 600/200/300 rows, so its category test rows are 300
openai_moderation + 300 beavertails, and each category AUROC rests on 20-100 positives. The
sources hold 1,680 and 3,021 rows; the rest (after dropping any row whose text equals a protocol
train or validation text) are rows no stage of the guard ever read. This writes a data dir whose
train and validation splits are the protocol's own (so the TF-IDF baseline fits on the same rows
as the head) and whose test split is those left-out rows:

    python experiments/categories_offline6/heldout_rest.py --protocol_data $WORK/data \
        --source ../shared/data/siren --out $WORK/rest
    siren eval --guard <copy of the guard> --data_dir $WORK/rest --datasets openai_moderation beavertails \
        --max_per_split 600 200 5000 --no_answers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATASETS = ("openai_moderation", "beavertails")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol_data", type=Path, required=True, help="the data dir the protocol's build.py wrote")
    ap.add_argument("--source", type=Path, required=True, help="the offline rows: <source>/<dataset>/<split>.jsonl")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    for name in DATASETS:
        used = {s: read(args.protocol_data / name / f"{s}.jsonl") for s in ("train", "validation", "test")}
        used_ids = {r["id"] for rows in used.values() for r in rows}
        seen_texts = {r["text"] for s in ("train", "validation") for r in used[s]}
        source = [r for f in sorted((args.source / name).glob("*.jsonl")) for r in read(f)]
        rest = [r for r in source if r["id"] not in used_ids]
        kept = [r for r in rest if r["text"] not in seen_texts]
        (args.out / name).mkdir(parents=True, exist_ok=True)
        for s in ("train", "validation"):
            (args.out / name / f"{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in used[s]))
        (args.out / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
        print(f"{name}: {len(source)} source rows, {len(used_ids)} in the protocol, {len(rest)} left out, "
              f"{len(rest) - len(kept)} of them dropped (text of a train/validation row), "
              f"{len(kept)} held out ({sum(r['label'] for r in kept)} harmful)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
