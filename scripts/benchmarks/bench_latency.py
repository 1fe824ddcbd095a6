"""Serving latency: ``siren.runtime.guard.SirenGuard`` against the authors' runtime
(``siren_guard.SirenGuard`` from PyPI ``llm-siren``) on the same guard folder, same texts,
same device, same backbone dtype, in one process.

Texts: ``--n`` rows drawn (seeded) from every dataset in the data dir. Batch 1: each text is
scored by ``score(text)`` in both runtimes, alternating which goes first, so that drifts in
machine load hit both alike; the figure is the sum over texts. Batch 32: ``score_batch`` on
consecutive chunks of 32, alternating likewise (passing over the chunks again, and reporting the
time per pass, until every runtime has gone first once). The runtimes' scores are compared too.
Prints one table (seconds, texts/s, ratio theirs/ours: > 1 means ours is faster).

Ours loads as users get it: on a CPU with native bf16 its backbone's Linear weights are
prepacked and its head's input layer runs in packed bf16 (``siren.runtime.prepack``; the JSON
says ``prepacked``). ``--plain_too`` also times
ours with ``prepack=False`` in the same rotation: the gain of prepacking alone, measured in one run.
``--unshared_too`` times ours prepacked but with every Linear its own product (no product shared by the
Linears that read one input, ``prepack_linears(share_inputs=False)``): the gain of sharing alone.
``--compiled_too`` likewise times ours with ``compile=True`` (``SirenGuard.from_pretrained``: single
texts through a ``torch.compile``d forward; the JSON says how long the compile took).

    .venv/bin/python scripts/benchmarks/bench_latency.py --guard /path/to/guard --n 64 --data_dir ../shared/data/siren
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import sample_texts  # noqa: E402  (n texts drawn, seeded, from the data dir)



def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench(runtimes: dict, texts: list[str], batch: int) -> dict:
    """Timings of every runtime on the same chunks, the order rotating from chunk to chunk so that
    drifts in machine load hit all alike (the chunks are passed over again while there are fewer
    of them than runtimes; the times are per pass). runtimes: {"ours": ..., "theirs": ..., optionally "plain"
    (ours without prepacking) and "compiled" (ours with compile=True)}. -> {"<name>_s",
    "max_abs_diff" (ours against theirs), and per optional runtime X "max_abs_diff_X" (X against ours)}."""
    chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    total = dict.fromkeys(runtimes, 0.0)
    names = list(runtimes)
    diffs = {name: [] for name in names if name != "ours"}
    # Fewer chunks than runtimes (64 texts in 32s: 2 chunks): pass over them again until every
    # runtime has gone first once, so that none is always first (cold caches) or last.
    passes = -(-len(names) // len(chunks))
    for k, chunk in enumerate(chunks * passes):
        got = {}
        for name in names[k % len(names):] + names[:k % len(names)]:
            guard = runtimes[name]
            if batch == 1:
                fn = lambda g=guard, c=chunk: [g.score(c[0])]  # noqa: E731
            elif name == "theirs":
                fn = lambda g=guard, c=chunk: g.score_batch(c)  # noqa: E731
            else:
                fn = lambda g=guard, c=chunk: g.score_batch(c, batch_size=batch)  # noqa: E731
            s, res = timed(fn)
            got[name] = np.asarray([r.score for r in res])
            total[name] += s
        for name in diffs:
            diffs[name].append(float(np.max(np.abs(got[name] - got["ours"]))))
    out = {f"{name}_s": t / passes for name, t in total.items()}   # seconds for the texts once
    for name, values in diffs.items():
        out["max_abs_diff" if name == "theirs" else f"max_abs_diff_{name}"] = max(values)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guard", required=True, help="a guard folder (siren_config.json + siren.safetensors)")
    ap.add_argument("--n", type=int, default=64, help="texts (batch 1 scores each; batch 32 scores all)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--data_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", help="backbone dtype for both (default: the one the guard records, else float32)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--plain_too", action="store_true",
                    help="also time ours without prepacked weights (prepack=False), in the same rotation")
    ap.add_argument("--unshared_too", action="store_true",
                    help="also time ours prepacked without shared products (every Linear its own), in the same rotation")
    ap.add_argument("--compiled_too", action="store_true",
                    help="also time ours with compile=True (a torch.compile'd single-text forward), in the same rotation")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import siren_guard

    from siren.runtime.guard import SirenGuard
    from siren.runtime.prepack import packed_count, prepack_head, prepack_linears

    cfg = json.loads((Path(a.guard) / "siren_config.json").read_text())
    dtype = a.dtype or (cfg.get("siren") or {}).get("dtype") or "float32"
    torch_dtype = getattr(torch, dtype)
    ours = SirenGuard.from_pretrained(a.guard, device="cpu", dtype=dtype)
    theirs = siren_guard.SirenGuard.from_pretrained(a.guard, device="cpu", dtype=torch_dtype,
                                                    trust_remote_code=False)
    runtimes = {"ours": ours, "theirs": theirs}
    if a.plain_too:
        runtimes["plain"] = SirenGuard.from_pretrained(a.guard, device="cpu", dtype=dtype, prepack=False)
    if a.unshared_too:
        unshared = SirenGuard.from_pretrained(a.guard, device="cpu", dtype=dtype, prepack=False)
        prepack_linears(unshared.backbone.model, share_inputs=False)
        prepack_head(unshared.head)       # as the default load does: only the sharing differs
        runtimes["unshared"] = unshared
    compile_s = None
    if a.compiled_too:
        compile_s, runtimes["compiled"] = timed(lambda: SirenGuard.from_pretrained(a.guard, device="cpu", dtype=dtype,
                                                                                   compile=True))
    extras = [name for name in ("plain", "unshared", "compiled") if name in runtimes]
    texts = sample_texts(a.n, a.seed, a.data_dir)
    warm = texts[: min(4, len(texts))]
    for guard in runtimes.values():      # first-call costs (allocator, kernels) out of the figures
        for t in warm:
            guard.score(t)
        guard.score_batch(warm)
    tok = ours.backbone.tokenizer
    n_tokens = int(sum(len(x) for x in tok(texts, truncation=True, max_length=ours.max_length)["input_ids"]))
    rows = {}
    for b in (1, a.batch):
        r = bench(runtimes, texts, b)
        r["ratio_theirs_over_ours"] = r["theirs_s"] / r["ours_s"]
        for name in extras:
            r[f"ratio_theirs_over_{name}"] = r["theirs_s"] / r[f"{name}_s"]
            r[f"ratio_{name}_over_ours"] = r[f"{name}_s"] / r["ours_s"]
        rows[f"batch {b}"] = r
    result = {"guard": a.guard, "n_texts": len(texts), "n_tokens": n_tokens, "dtype": dtype,
              "threads": torch.get_num_threads(),
              "prepacked": packed_count(ours.backbone.model) > 0,
              "compile_s": compile_s,
              "selected_layers": len(ours.layers),
              "deepest_layer": max(ours.layers), "num_layers": ours.backbone.num_layers, "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(f"\n{len(texts)} texts ({n_tokens} tokens), {dtype}{' (ours prepacked)' if result['prepacked'] else ''}, "
          f"{torch.get_num_threads()} threads, "
          f"layers read {len(ours.layers)} (deepest {max(ours.layers)} of {ours.backbone.num_layers})")
    print(f"{'':10s} {'ours_s':>8s} {'theirs_s':>9s} {'ours text/s':>11s} {'theirs text/s':>13s} "
          f"{'theirs/ours':>11s} {'max|diff|':>9s}")
    for name, r in rows.items():
        print(f"{name:10s} {r['ours_s']:8.2f} {r['theirs_s']:9.2f} {len(texts) / r['ours_s']:11.2f} "
              f"{len(texts) / r['theirs_s']:13.2f} {r['ratio_theirs_over_ours']:10.2f}x "
              f"{r['max_abs_diff']:9.1e}")
    titles = {"plain": "ours without prepacking (plain)",
              "unshared": "ours prepacked, every Linear its own product (unshared)",
              "compiled": f"ours with compile=True (compiled; the compile took {compile_s or 0:.0f} s)"}
    for extra in extras:
        print(f"{titles[extra]}, in the same rotation:")
        for name, r in rows.items():
            print(f"{name:10s} {extra}_s {r[f'{extra}_s']:.2f}  theirs/{extra} {r[f'ratio_theirs_over_{extra}']:.2f}x  "
                  f"{extra}/ours {r[f'ratio_{extra}_over_ours']:.2f}x  max|ours-{extra}| {r[f'max_abs_diff_{extra}']:.1e}")
    return 0


if __name__ == "__main__":
    from siren.errors import run_main

    raise SystemExit(run_main(main, "bench_latency.py"))
