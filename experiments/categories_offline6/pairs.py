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
    from experiments.streaming_verdicts.pools import Hooked, answer_mask, forward_all
    from siren.artifact import load_guard_config, selection_from_config
    from siren.backbones import load_backbone

    cfg = json.loads((guard / "results.json").read_text())["config"]
    _layers, sel, layer_w = selection_from_config(load_guard_config(guard))
    bb = load_backbone(cfg["model"], device="cpu", dtype=cfg.get("dtype"))
    hooked = Hooked(bb.model)
    hooked.pad = bb.tokenizer.pad_token_id
    d = bb.model.config.hidden_size
    cols = np.concatenate([l * d + np.asarray(sel[l]) for l in sorted(sel)])
    weight = np.concatenate([np.full(len(sel[l]), layer_w[l], np.float32) for l in sorted(sel)])
    out = {}
    for split, ids in ids_by_split.items():
        rows = [json.loads(x) for x in open(Path(cfg["data_dir"]) / "beavertails" / f"{split}.jsonl") if x.strip()]
        rows = [r for r in rows if r["id"] in ids]
        enc = [answer_mask(bb.tokenizer, r["prompt"], r["response"], cfg.get("max_length", 512)) for r in rows]

        def pools(i, h):
            h, is_ans = h[:, cols] * weight, enc[i][1]
            return h[~is_ans].mean(0), (h[is_ans] if is_ans.any() else h).mean(0)

        out[split] = dict(zip([r["id"] for r in rows], forward_all(hooked, [ids for ids, _m in enc], pools)))
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
