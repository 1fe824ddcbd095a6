"""mlp_mean without the first token, written over a COPY of a feature cache (an experiment, not a pooling type).

Why: smollm2-135m's first position carries the model's massive activations. On the first 40
toxic_chat train texts (median 22 tokens; `--diagnose 40`, output in first_token_diagnose.log) the
first token's MLP output has 760x the norm of the other tokens' at layer 11 and 83x at layer 28, and
its term in the mean (its vector / length) has 0.38-1.01 times the mean's norm at layers 1, 2, 8-11
and 27-29. The mean over a short text is then largely the first token's (its first word's) vector,
scaled by 1 / length. This script measures what the head gains if the mean leaves position 0 out
(texts of one token keep it).

The guard format cannot say "skip the first token" (the runtime, llm-siren, pools over the whole
attention mask), so a guard trained on these features could not be served by it; this only answers
whether the lever exists. It does not (README.md, "The mean without the first token").

It overwrites `features.npy` of the train and validation mlp_mean folders under `--cache` in place
(same shape and dtype, so the manifests stay valid: never point it at a cache a run reads), rows in
the cached order. `--keep_first` computes the ordinary mlp_mean instead, writes nothing, and prints
how far it is from the cached values (a check of this script's forward against extraction's).

    cp -r <bench>/features $TMPDIR/ft_features
    python first_token.py --cache $TMPDIR/ft_features --data_dir <bench>/data
    python first_token.py --diagnose 40 --data_dir <bench>/data      # the ratios above; writes nothing
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from siren.backbones import load_backbone
from siren.data import load_splits
from siren.features import decoder_parts, tokenize
from siren.pipeline.cache import default_cache_dir

DATASETS = ("toxic_chat", "openai_moderation", "aegis", "wildguard", "safe_rlhf", "beavertails")


@torch.inference_mode()
def pooled_mlp(model, layers, batch: list[list[int]], pad_id: int, skip_first: bool) -> torch.Tensor:
    """batch: token id lists -> (b, L, d) float32 means of each layer's MLP output over the real
    tokens (position 0 left out where a text has 2+ tokens and skip_first)."""
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, t in enumerate(batch):
        ids[i, :len(t)] = torch.as_tensor(t)
        mask[i, :len(t)] = 1
    keep = mask.clone()
    if skip_first:
        keep[:, 0] = torch.where(mask.sum(1) >= 2, 0, 1)
    keep_f = keep.unsqueeze(-1).float()
    counts = keep.sum(1, keepdim=True).float()
    out = [None] * len(layers)

    def make(k):
        def hook(_m, _i, o):
            h = o[0] if isinstance(o, tuple) else o
            out[k] = (h.float() * keep_f).sum(1) / counts
        return hook

    handles = [layer.mlp.register_forward_hook(make(k)) for k, layer in enumerate(layers)]
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(out, dim=1)


def diagnose(model: str, data_dir: str, n: int) -> int:
    """Per layer, over the first n toxic_chat train texts of 2+ tokens: the first token's MLP output
    norm over the mean norm of the others', and the norm of its term in the mean (vector / length)
    over the mean's norm; both averaged over the texts."""
    bb = load_backbone(model, dtype="float32")
    layers, _norm = decoder_parts(bb.model)
    texts = load_splits("toxic_chat", data_dir=data_dir)["train"]["text"].tolist()[:n]
    outs: dict[int, torch.Tensor] = {}
    handles = [layer.mlp.register_forward_hook(lambda _m, _i, o, k=k: outs.__setitem__(k, o[0].float()))
               for k, layer in enumerate(layers)]
    ratio, share, lengths = np.zeros(len(layers)), np.zeros(len(layers)), []
    with torch.inference_mode():
        for ids in tokenize(bb.tokenizer, texts, 512):
            if len(ids) < 2:
                continue
            bb.model(input_ids=torch.as_tensor([ids]), use_cache=False)
            lengths.append(len(ids))
            for k in range(len(layers)):
                h = outs[k]                                   # (T, d)
                norms = h.norm(dim=-1)
                ratio[k] += float(norms[0] / norms[1:].mean())
                share[k] += float((h[0] / len(ids)).norm() / h.mean(0).norm())
    for hnd in handles:
        hnd.remove()
    medians = {}
    for ds in DATASETS:
        train_texts = load_splits(ds, data_dir=data_dir)["train"]["text"].tolist()
        medians[ds] = int(np.median([len(t) for t in tokenize(bb.tokenizer, train_texts, 512)]))
    print("median tokens of each dataset's train texts: " + ", ".join(f"{ds} {v}" for ds, v in medians.items()))
    m = len(lengths)
    print(f"{m} toxic_chat train texts of 2+ tokens, median {int(np.median(lengths))} tokens (fp32)")
    print("layer  |first| / mean |other|   |first / T| / |mean|")
    for k in range(len(layers)):
        print(f"{k:5d}  {ratio[k] / m:20.1f}   {share[k] / m:20.2f}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", help="a copy of a feature cache (its mlp_mean folders are rewritten)")
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--splits", nargs="+", default=["train", "validation"])
    ap.add_argument("--batch_tokens", type=int, default=2048)
    ap.add_argument("--keep_first", action="store_true", help="check only: ordinary mlp_mean against the cache")
    ap.add_argument("--diagnose", type=int, metavar="N",
                    help="print, per layer, how much the first token weighs in the MLP means of the first N "
                         "toxic_chat train texts (an fp32 forward, one text at a time) and stop")
    a = ap.parse_args()
    if a.diagnose:
        return diagnose(a.model, a.data_dir, a.diagnose)
    if not a.cache:
        ap.error("--cache is required (unless --diagnose)")
    if not a.keep_first and Path(a.cache).expanduser().resolve() == default_cache_dir().resolve():
        ap.error(f"--cache {a.cache} is the default feature cache: give a copy of it (this rewrites its mlp_mean features)")
    root = Path(a.cache) / a.model
    man0 = json.loads((root / a.datasets[0] / a.splits[0] / "mlp_mean" / "manifest.json").read_text())
    bb = load_backbone(a.model, dtype=man0["dtype"])
    layers, _norm = decoder_parts(bb.model)
    pad = bb.tokenizer.pad_token_id if bb.tokenizer.pad_token_id is not None else bb.tokenizer.eos_token_id
    for ds in a.datasets:
        frames = load_splits(ds, data_dir=a.data_dir)
        for split in a.splits:
            folder = root / ds / split / "mlp_mean"
            man = json.loads((folder / "manifest.json").read_text())
            frame = frames[split]
            cached_ids = np.load(folder / "ids.npy").astype(str).tolist()
            if frame["id"].astype(str).tolist() != cached_ids:
                raise SystemExit(f"{folder}: cached rows are not the data dir's {ds}/{split} rows in order")
            toks = tokenize(bb.tokenizer, frame["text"].tolist(), man["max_length"])
            order = np.argsort([len(t) for t in toks], kind="stable")
            X = np.load(folder / "features.npy", mmap_mode="r" if a.keep_first else "r+")
            t0, i, diffs = time.time(), 0, np.zeros(X.shape, np.float32) if a.keep_first else None
            while i < len(order):
                j = i + 1
                while j < len(order) and (j - i + 1) * len(toks[order[j]]) <= a.batch_tokens:
                    j += 1
                rows = order[i:j]
                v = pooled_mlp(bb.model, layers, [toks[r] for r in rows], pad, not a.keep_first).numpy()
                if a.keep_first:
                    diffs[rows] = np.abs(v.astype(X.dtype).astype(np.float32) - X[rows].astype(np.float32))
                else:
                    X[rows] = v.astype(X.dtype)
                i = j
            if a.keep_first:   # |difference| in units of each neuron's standard deviation over the split
                rel = diffs / (np.asarray(X, np.float32).std(axis=0) + 1e-6)
                how = f", |difference| from the cache in neuron sds: largest {rel.max():.3g}, median {np.median(rel):.2g}"
            else:
                X.flush()
                how = ", rewritten"
            print(f"{ds}/{split}: {len(order)} rows in {time.time() - t0:.1f} s{how}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
