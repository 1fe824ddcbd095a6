"""Does the answer's own pool help the category head on prompt + answer rows? (validation only)

The product's category probes read the whole text's pool (prompt + answer for beavertails). The
answer verdict's representation pools the answer's tokens alone, with the prompt in context, and
the prompt's tokens can be pooled alike. This refits the product's probes (one L2 logistic per
category, C 0.001 / 0.003) on the whole-text pool beside those pools, all on the guard's
selected neurons times its layer weights; rows without an answer (openai_moderation) repeat their
whole-text pool in the other slots. Scored as levers.py scores: mean validation AUROC over the
categories with >= 5 / >= 20 validation positives. No test row is read.

    PYTHONPATH=. python experiments/categories_offline6/pairs.py --guard $WORK/guard
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from levers import Bench, load_rows, standardise  # noqa: E402

VARIANTS = (("whole text (the product)", "W"), ("whole text + answer", "WA"), ("whole text + prompt", "WP"),
            ("whole text + prompt + answer", "WPA"), ("answer alone (whole text without one)", "A"))


def pair_pools(guard: Path, ids_by_split: dict) -> dict:
    """{split: {row id: (prompt pool (k,), answer pool (k,))}} of the beavertails rows among the ids."""
    from experiments.streaming_verdicts.pools import GuardReader, forward_all

    reader = GuardReader(guard)
    out = {}
    for split, ids in ids_by_split.items():
        rows = [json.loads(x) for x in open(Path(reader.config["data_dir"]) / "beavertails" / f"{split}.jsonl")
                if x.strip()]
        rows = [r for r in rows if r["id"] in ids]
        enc = reader.pairs(rows)

        def pools(i, h):
            h, is_ans = reader.selected(h), enc[i][1]
            return h[~is_ans].mean(0), (h[is_ans] if is_ans.any() else h).mean(0)

        out[split] = dict(zip([r["id"] for r in rows], forward_all(reader.hooked, [ids for ids, _m in enc], pools)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guard", type=Path, required=True)
    args = ap.parse_args()
    d = load_rows(args.guard)
    extra = pair_pools(args.guard, {s: set(d[s]["ids"]) for s in ("train", "validation")})
    feats = {}
    for s in ("train", "validation"):
        Z = d[s]["Z"]
        P, A = Z.copy(), Z.copy()
        for k, i in enumerate(d[s]["ids"]):
            if i in extra[s]:
                P[k], A[k] = extra[s][i]
        feats[s] = {"W": Z, "P": P, "A": A}
        print(f"{s}: {len(Z)} rows, {len(extra[s])} with an answer", flush=True)
    b = Bench(d["train"], d["validation"])
    print("| input | C | validation AUROC (>= 5 positives) | (>= 20 positives) |\n|---|---|---:|---:|")
    for name, keys in VARIANTS:
        Ft, Fv = standardise(*(np.concatenate([feats[s][k] for k in keys], 1) for s in ("train", "validation")))
        for C in (1e-3, 3e-3):
            print(f"| {name} | {C:g} | {b.score(b.probes(Ft, Fv, C))} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
