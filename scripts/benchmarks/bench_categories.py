"""What the category head costs: guard folder size and single-text latency, with and without it.

    python scripts/benchmarks/bench_categories.py --guard GUARD_DIR [--data_dir DIR] [--texts 24] [--rounds 5]

Size: the bytes of the guard proper (siren_config.json + siren.safetensors, what a server loads)
and of the whole folder, against the category head's two files. Latency: one loaded guard scores
the same texts one at a time (`guard.score(text)`) with its category head on and off
(`guard.categories = None`), in alternating rounds so that machine load hits both alike; the
median per-text time of each. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def sizes(folder: Path) -> dict:
    from siren.categories import HEAD_CONFIG, HEAD_WEIGHTS

    head = sum((folder / n).stat().st_size for n in (HEAD_CONFIG, HEAD_WEIGHTS))
    guard = sum((folder / n).stat().st_size for n in ("siren_config.json", "siren.safetensors"))
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return {"category_head_bytes": head, "guard_bytes": guard, "folder_bytes_with_head": total,
            "added_to_guard": head / guard, "added_to_folder": head / (total - head)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--guard", required=True)
    p.add_argument("--data_dir", help="texts from <data_dir>/openai_moderation/test.jsonl (default: fixed sentences)")
    p.add_argument("--texts", type=int, default=24)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    import torch

    from siren.runtime.guard import SirenGuard

    folder = Path(args.guard)
    if args.data_dir:
        lines = (Path(args.data_dir) / "openai_moderation" / "test.jsonl").read_text().splitlines()
        texts = [json.loads(line)["text"] for line in lines[: args.texts]]
    else:
        texts = [f"sentence number {i}: how do I bake bread, and is it dangerous to heat an oven?" for i in range(args.texts)]
    guard = SirenGuard.from_pretrained(str(folder))
    head = guard.categories
    for t in texts[:3]:
        guard.score(t)                                       # warm up
    times = {"with_head": [], "without_head": []}
    for r in range(args.rounds):
        for key in (("with_head", "without_head") if r % 2 == 0 else ("without_head", "with_head")):
            guard.categories = head if key == "with_head" else None
            for t in texts:
                start = time.perf_counter()
                guard.score(t)
                times[key].append(time.perf_counter() - start)
    guard.categories = head
    z = guard.features(texts[:1])
    start = time.perf_counter()
    for _ in range(200):
        head.verdicts(z)
    head_only = (time.perf_counter() - start) / 200
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(json.dumps({**sizes(folder), "median_ms_per_text": med,
                      "added_latency": med["with_head"] / med["without_head"] - 1,
                      "category_head_alone_ms": head_only * 1000, "texts": len(texts), "rounds": args.rounds,
                      "torch_threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
