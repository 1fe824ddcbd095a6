"""Benchmark feature extraction on real rows with smollm2-135m on this machine's CPU.

(a) floor: bare forward of the base model on the same length-bucketed batches as (b);
(b) ours: `siren.pipeline.extract.extract_texts` (tokenise, all 30 layers residual_mean, pooling, cache writes);
(c) the original code's way: fixed batches of 32 in input order padded to the longest,
    `output_hidden_states=True`, per-sample Python pooling loop into a list of dicts.
Also: padded/real tokens of (b) and (c), and the peak RSS of (b) for n and 4n texts, each in a
fresh subprocess (resource.getrusage ru_maxrss).

    .venv/bin/python scripts/benchmarks/bench_extract.py --n 512 --rss_n 128 --out bench_extract.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m"


def sample_texts(n: int, seed: int, data_dir: str | None) -> list[str]:
    """n texts drawn (seeded) from all rows of every dataset in the data dir."""
    from siren.data import load_source

    root = Path(data_dir or os.environ.get("SIREN_DATA_DIR") or REPO.parent / "shared" / "data" / "siren")
    texts = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for frame in load_source(folder.name, root).values():
            texts.extend(frame["text"].tolist())
    rng = np.random.default_rng(seed)
    if n > len(texts):
        raise SystemExit(f"asked for {n} texts, {root} has {len(texts)}")
    return [texts[i] for i in rng.choice(len(texts), size=n, replace=False)]


def load():
    from siren.backbones import load_backbone

    return load_backbone(MODEL, device="cpu", dtype="float32")


def run_ours(bb, texts, batch_tokens: int, folder: Path) -> float:
    from siren.pipeline.extract import extract_texts
    from siren.features import LayerFeatures

    lf = LayerFeatures(bb.model, bb.tokenizer, pooling_types=("residual_mean",), max_length=512)
    t = time.perf_counter()
    extract_texts(lf, texts, folder, manifest={"backbone": MODEL, "dataset": "bench", "split": "mixed"},
                  labels=np.zeros(len(texts), dtype=np.int64), ids=[str(i) for i in range(len(texts))],
                  batch_tokens=batch_tokens, progress_desc="(b) ours")
    return time.perf_counter() - t


def padded_tokens(batches, lengths) -> int:
    from siren.features import batch_width

    return int(sum(len(b) * batch_width([lengths[i] for i in b]) for b in batches))


def bench(args) -> dict:
    import torch

    from siren.features import LayerFeatures, batch_width, length_batches

    # Peak RSS of (b) for n and 4n texts, each in a fresh subprocess, spawned first: Linux keeps
    # ru_maxrss across fork+exec, so a child of a big parent would report the parent's peak.
    rss = {}
    for n in ((args.rss_n, 4 * args.rss_n) if args.rss_n else ()):
        cmd = [sys.executable, __file__, "--_rss_child", str(n), "--batch_tokens", str(args.batch_tokens),
               "--seed", str(args.seed)] + (["--data_dir", args.data_dir] if args.data_dir else [])
        child = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        rss[f"rss_n{n}_peak_mib"] = child["peak_mib"]
        rss[f"rss_n{n}_vmhwm_mib"] = child["vmhwm_mib"]
        rss[f"rss_n{n}_after_load_mib"] = child["after_load_mib"]
        print(f"RSS n={n}: {child}", file=sys.stderr, flush=True)
    if args.rss_n:
        rss["rss_4n_over_n"] = round(rss[f"rss_n{4 * args.rss_n}_peak_mib"] / rss[f"rss_n{args.rss_n}_peak_mib"], 3)

    texts = sample_texts(args.n, args.seed, args.data_dir)
    t = time.perf_counter()
    bb = load()
    load_s = time.perf_counter() - t
    model, tok = bb.model, bb.tokenizer
    lf = LayerFeatures(model, tok, max_length=512)
    t = time.perf_counter()
    ids = lf.tokenize(texts)
    tokenize_s = time.perf_counter() - t
    lengths = [len(x) for x in ids]
    real = int(sum(lengths))
    batches = length_batches(lengths, args.batch_tokens)

    # Warm up (first calls pay one-off costs), on a few short texts.
    with torch.no_grad():
        model(input_ids=torch.tensor([ids[0][:8]] * 2), use_cache=False)
    lf([ids[0][:8]] * 2)

    def padded(idx) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids, attention mask) of one batch, right-padded: (b, width) each."""
        width = batch_width([lengths[i] for i in idx])
        x = torch.full((len(idx), width), lf.pad_id, dtype=torch.long)
        m = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            x[r, : lengths[i]] = torch.tensor(ids[i])
            m[r, : lengths[i]] = 1
        return x, m

    # (a) bare forward on the same batches.
    def floor() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for idx in batches:
                x, m = padded(idx)
                model(input_ids=x, attention_mask=m, use_cache=False)
        return time.perf_counter() - t0

    def interleaved() -> tuple[float, float]:
        """Per batch, bare forward then our feature call, alternating: robust to a busy machine."""
        fwd = ours = 0.0
        with torch.no_grad():
            for k, idx in enumerate(batches):
                x, m = padded(idx)
                for which in ((0, 1) if k % 2 == 0 else (1, 0)):
                    t0 = time.perf_counter()
                    if which == 0:
                        model(input_ids=x, attention_mask=m, use_cache=False)
                        fwd += time.perf_counter() - t0
                    else:
                        lf([ids[i] for i in idx])          # padded to the same width as x
                        ours += time.perf_counter() - t0
        return fwd, ours

    if args.interleave:
        i_fwd, i_ours = interleaved()
        print(f"interleaved: forward {i_fwd:.1f} s, ours {i_ours:.1f} s", file=sys.stderr, flush=True)
    a_s = floor()
    print(f"(a) floor: {a_s:.1f} s", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        b_s = run_ours(bb, texts, args.batch_tokens, Path(tmp) / "cache")
    print(f"(b) ours: {b_s:.1f} s", file=sys.stderr, flush=True)
    a2_s = floor()  # again, to see the machine's noise
    print(f"(a) floor again: {a2_s:.1f} s", file=sys.stderr, flush=True)

    # (c) the original: batches of 32 in input order, all hidden states, Python pooling loop.
    c_batches = [list(range(s, min(s + 32, len(texts)))) for s in range(0, len(texts), 32)]
    t0 = time.perf_counter()
    records = []
    num_layers = model.config.num_hidden_layers
    with torch.no_grad():
        for idx in c_batches:
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=512, return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            for r in range(len(idx)):
                mask = enc["attention_mask"][r].bool()
                sample = {}
                for layer in range(num_layers):
                    h = out.hidden_states[layer + 1][r]
                    sample[f"layer{layer}_residual_mean"] = h[mask].mean(dim=0).float().cpu().numpy()
                records.append(sample)
    c_s = time.perf_counter() - t0
    c_lengths = [len(x) for x in tok(texts, truncation=True, max_length=512)["input_ids"]]
    print(f"(c) original: {c_s:.1f} s", file=sys.stderr, flush=True)

    floor_s = min(a_s, a2_s)
    result = {
        "device": "cpu", "threads": torch.get_num_threads(), "model": MODEL, "dtype": "float32",
        "n": len(texts), "real_tokens": real, "batch_tokens": args.batch_tokens,
        "load_s": round(load_s, 2), "tokenize_s": round(tokenize_s, 3),
        "a_floor_s": round(a_s, 2), "a_floor_again_s": round(a2_s, 2), "b_ours_s": round(b_s, 2),
        "c_original_s": round(c_s, 2),
        "b_over_a": round(b_s / floor_s, 3), "c_over_b": round(c_s / b_s, 2),
        "b_texts_per_s": round(len(texts) / b_s, 1), "b_tokens_per_s": round(real / b_s, 1),
        "b_batches": len(batches), "c_batches": len(c_batches),
        "b_padding_ratio": round(padded_tokens(batches, lengths) / real, 3),
        "c_padding_ratio": round(padded_tokens(c_batches, c_lengths) / sum(c_lengths), 3),
    }
    result.update(rss)
    if args.interleave:
        result.update(interleaved_forward_s=round(i_fwd, 2), interleaved_ours_s=round(i_ours, 2),
                      interleaved_ours_over_forward=round(i_ours / i_fwd, 3))
    return result


def _vmhwm_mib() -> float:
    """Peak RSS of this process image from /proc (reset by exec, unlike ru_maxrss); -1 if absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return -1.0


def rss_child(args) -> None:
    texts = sample_texts(args._rss_child, args.seed, args.data_dir)
    bb = load()
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        seconds = run_ours(bb, texts, args.batch_tokens, Path(tmp) / "cache")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": len(texts), "after_load_mib": round(after_load, 1), "peak_mib": round(peak, 1),
                      "vmhwm_mib": round(_vmhwm_mib(), 1),
                      "seconds": round(seconds, 2)}))


def main() -> None:
    from siren.pipeline.extract import default_batch_tokens

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--batch_tokens", type=int, default=None, help="default: the library's CPU default")
    p.add_argument("--rss_n", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--tmp_dir", default=None, help="where the temporary caches go")
    p.add_argument("--out", default=None, help="write the JSON here too")
    p.add_argument("--interleave", action="store_true",
                   help="also time bare forward vs our feature call batch by batch, alternating (busy machines)")
    p.add_argument("--_rss_child", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tmp_dir:
        os.makedirs(args.tmp_dir, exist_ok=True)
    args.batch_tokens = args.batch_tokens or default_batch_tokens("cpu")
    if args._rss_child:
        rss_child(args)
        return
    result = bench(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from siren.fileio import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    fl = min(result["a_floor_s"], result["a_floor_again_s"])
    rows = [("(a) bare forward, bucketed", fl, "-", result["b_padding_ratio"]),
            ("(b) ours: extract + cache", result["b_ours_s"], f"b/a {result['b_over_a']:.2f}", result["b_padding_ratio"]),
            ("(c) original: 32/batch, all hidden", result["c_original_s"], f"c/b {result['c_over_b']:.2f}",
             result["c_padding_ratio"])]
    print(f"\n{'method':38s} {'seconds':>8s} {'ratio':>10s} {'pad/real':>9s}")
    for name, s, ratio, pad in rows:
        print(f"{name:38s} {s:8.1f} {ratio:>10s} {pad:9.3f}")
    if args.interleave:
        print(f"interleaved per batch: forward {result['interleaved_forward_s']:.1f} s, ours (no writes) "
              f"{result['interleaved_ours_s']:.1f} s, ratio {result['interleaved_ours_over_forward']:.3f}")
    n = args.rss_n
    if not n:
        return
    print(f"peak RSS (b): n={n}: {result[f'rss_n{n}_peak_mib']:.0f} MiB, 4n={4 * n}: "
          f"{result[f'rss_n{4 * n}_peak_mib']:.0f} MiB (ratio {result['rss_4n_over_n']:.3f})")


if __name__ == "__main__":
    from siren.errors import run_main

    raise SystemExit(run_main(main, "bench_extract.py"))
