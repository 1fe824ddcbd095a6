"""The floor of feature extraction: a bare forward pass of the backbone over a data dir's rows.

Loads the backbone once (same dtype resolution as `siren train`), tokenises every row of the
given datasets and splits exactly as extraction does (normalised, right-truncated at
max_length), groups each (dataset, split) into the same length-bucketed batches as extraction
(``batch_tokens``, default as extraction's), and times ``model(input_ids, attention_mask)`` over them with nothing else:
no hidden states kept, no pooling, no cache writes. Prints one JSON line:
{"forward_s", "load_s", "tokenize_s", "n_texts", "real_tokens", "padded_tokens", "dtype"}.

    python scripts/benchmarks/forward_floor.py --model smollm2-135m --data_dir DIR --datasets a b c
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> int:
    from siren.backbones import load_backbone, resolve_device, resolve_dtype
    from siren.data import load_splits
    from siren.features import batch_width, length_batches, tokenize
    from siren.pipeline.extract import default_batch_tokens

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--datasets", nargs="+", required=True)
    ap.add_argument("--splits", nargs="+", default=["train", "validation", "test"])
    ap.add_argument("--max_per_split", nargs="+", type=int)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dtype")
    ap.add_argument("--device")
    ap.add_argument("--max_length", type=int, default=512)
    ap.add_argument("--batch_tokens", type=int)
    a = ap.parse_args()

    device = resolve_device(a.device)
    dtype = resolve_dtype(a.dtype, device)
    t = time.perf_counter()
    bb = load_backbone(a.model, device=device, dtype=str(dtype).removeprefix("torch."))
    load_s = time.perf_counter() - t
    groups = []     # one text list per (dataset, split), as extraction batches them
    for name in a.datasets:
        frames = load_splits(name, data_dir=a.data_dir, seed=a.seed, max_per_split=a.max_per_split)
        groups += [frames[s]["text"].tolist() for s in a.splits if s in frames]
    texts = [x for g in groups for x in g]
    t = time.perf_counter()
    ids = tokenize(bb.tokenizer, texts, a.max_length)
    tokenize_s = time.perf_counter() - t
    lengths = [len(x) for x in ids]
    batches, start = [], 0
    for g in groups:
        batches += [start + b for b in length_batches(lengths[start:start + len(g)],
                                                      a.batch_tokens or default_batch_tokens(device))]
        start += len(g)
    pad = bb.tokenizer.pad_token_id if bb.tokenizer.pad_token_id is not None else 0
    model = bb.model
    with torch.no_grad():       # warm-up: first calls pay one-off costs
        model(input_ids=torch.tensor([ids[0][:8]] * 2, device=device), use_cache=False)
    padded_total = 0
    t = time.perf_counter()
    with torch.no_grad():
        for idx in batches:
            width = batch_width([lengths[i] for i in idx])
            x = torch.full((len(idx), width), pad, dtype=torch.long)
            m = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                x[r, : lengths[i]] = torch.tensor(ids[i])
                m[r, : lengths[i]] = 1
            padded_total += x.numel()
            model(input_ids=x.to(device), attention_mask=m.to(device), use_cache=False)
    forward_s = time.perf_counter() - t
    print(json.dumps({"forward_s": round(forward_s, 2), "load_s": round(load_s, 2), "tokenize_s": round(tokenize_s, 2),
                      "n_texts": len(texts), "real_tokens": int(sum(lengths)), "padded_tokens": int(padded_total),
                      "dtype": str(dtype).removeprefix("torch.")}))
    return 0


if __name__ == "__main__":
    from siren.errors import run_main

    raise SystemExit(run_main(main, "forward_floor.py"))
