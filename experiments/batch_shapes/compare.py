"""Extraction with the old batch plan (each batch padded to its longest text, at most 10% padding)
against the fixed-shape plan (`siren.features.length_batches`: widths from a ladder 12.5% apart,
rows = budget // width), on the same texts, same backbone, in one process each:
time, peak RSS, distinct (rows, width) shapes.

    python experiments/batch_shapes/compare.py old DATA_DIR toxic_chat wildguard aegis
    python experiments/batch_shapes/compare.py fixed DATA_DIR toxic_chat wildguard aegis

Each run is its own process (peak RSS is per process); alternate old/fixed to see machine drift.
"""
import sys
import time

import numpy as np

import siren  # noqa: F401  (sets the oneDNN cache size, as training does)
from siren.backbones import load_backbone
from siren.data import load_splits
from siren.features import LayerFeatures, batch_width, length_batches, tokenize

BUDGET = 2048   # the CPU default batch_tokens


def old_plan(lengths, batch_tokens, max_padding=0.10):
    """The plan before the width ladder: longest first, close a batch when the budget or 10% padding is hit."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, current, longest = [], [], 0
    for i in order:
        length = max(1, int(lengths[i]))
        if current and ((len(current) + 1) * longest > batch_tokens or length * (1 + max_padding) < longest):
            batches.append(np.asarray(current))
            current = []
        if not current:
            longest = length
        current.append(int(i))
    if current:
        batches.append(np.asarray(current))
    return batches


def status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    mode, data_dir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    bb = load_backbone("smollm2-135m", device="cpu", dtype="bfloat16")
    lf = LayerFeatures(bb.model, bb.tokenizer, pooling_types=("mlp_mean",))
    work = []   # (token id lists, padded width)
    real = padded = 0
    for name in names:
        frames = load_splits(name, data_dir=data_dir, seed=42)
        for split in ("train", "validation", "test"):
            ids = tokenize(bb.tokenizer, frames[split]["text"].tolist(), 512)
            lengths = [len(x) for x in ids]
            plan = old_plan(lengths, BUDGET) if mode == "old" else length_batches(lengths, BUDGET)
            for b in plan:
                width = max(lengths[i] for i in b) if mode == "old" else batch_width([lengths[i] for i in b])
                work.append(([ids[i] for i in b], width))
                real += sum(lengths[i] for i in b)
                padded += width * len(b)
    shapes = len({(len(b), w) for b, w in work})
    t = time.perf_counter()
    for batch, width in work:
        lf(batch, width=width)
    took = time.perf_counter() - t
    print(f"{mode}: {len(work)} batches, {shapes} shapes, padded/real {padded / real:.3f}, "
          f"time {took:.1f} s, peak RSS {status('VmHWM')} MiB")


if __name__ == "__main__":
    main()
