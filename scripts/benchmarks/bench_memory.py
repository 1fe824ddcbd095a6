"""Peak memory of building the head's input from cached features: the earlier way (each split
read into RAM and concatenated, then train+validation concatenated again) against the current
one (`cache.load_split` stacks the memmaps; only the selected neurons are gathered).

Synthetic caches (float16, as training writes them) in a temporary folder; each way runs in
its own fresh process, so its peaks are its own: ru_maxrss, and the peak of the anonymous
memory (RssAnon, sampled), which leaves out the memmaps' reclaimable page-cache pages. Prints
JSON with both peaks of both ways and their ratios. Example (about 250 MiB of caches; seconds):

    PYTHONPATH=. .venv/bin/python scripts/benchmarks/bench_memory.py --datasets 3 --n_train 2000 --n_val 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MODES = ("concatenate", "memmap")


def write_caches(root: Path, datasets: int, n_train: int, n_val: int, L: int, d: int, seed: int) -> None:
    """One finished cache folder per (dataset, split), readable by siren.pipeline.cache."""
    from siren.fileio import atomic_write_json
    from siren.pipeline.cache import _ids_sha256, _labels_sha256

    rng = np.random.default_rng(seed)
    for k in range(datasets):
        for split, n in (("train", n_train), ("validation", n_val)):
            folder = root / f"d{k}" / split
            folder.mkdir(parents=True)
            X = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=(n, L, d))
            for s in range(0, n, 256):
                X[s:s + 256] = rng.standard_normal((min(256, n - s), L, d)).astype(np.float16)
            X.flush()
            del X
            y, ids = (np.arange(n) % 2).astype(np.int64), np.array([f"d{k}-{split}-{i}" for i in range(n)])
            np.save(folder / "labels.npy", y)
            np.save(folder / "ids.npy", ids)
            atomic_write_json(folder / "manifest.json", {"n": n, "shape": [n, L, d], "cache_dtype": "float16",
                                                         "labels_sha256": _labels_sha256(y), "ids_sha256": _ids_sha256(ids)})


def build_head_input(root: Path, datasets: int, mode: str, per_layer: int) -> tuple[int, int]:
    """Z (n_train + n_val, k) for a fixed selection of `per_layer` neurons in every layer."""
    from siren.pipeline.cache import load_features, load_split
    from siren.pipeline.select import aggregate

    names = [f"d{k}" for k in range(datasets)]
    folders = {(name, split, "residual_mean"): root / name / split for name in names for split in ("train", "validation")}
    L, d = load_features(root / "d0" / "train").X.shape[1:]
    selection = {l: np.arange(0, d, d // per_layer)[:per_layer] for l in range(L)}
    weights = np.ones(L)
    if mode == "concatenate":  # what training did before: every split in RAM, then train+validation again
        X_tr = np.concatenate([np.asarray(load_features(folders[(n, "train", "residual_mean")]).X) for n in names])
        X_va = np.concatenate([np.asarray(load_features(folders[(n, "validation", "residual_mean")]).X) for n in names])
        X_all = np.concatenate([X_tr, X_va])
        del X_tr, X_va
        Z = aggregate(X_all, selection, weights)
    else:
        tr, va = (load_split(folders, names, s, "residual_mean") for s in ("train", "validation"))
        Z = np.concatenate([aggregate(tr.X, selection, weights), aggregate(va.X, selection, weights)])
    return Z.shape


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=int, default=3)
    ap.add_argument("--n_train", type=int, default=2000)
    ap.add_argument("--n_val", type=int, default=500)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--per_layer", type=int, default=16, help="selected neurons per layer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--_child", nargs=2, metavar=("ROOT", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        import resource
        import threading

        # ru_maxrss also counts the memmaps' file-backed pages, which the kernel can drop at any
        # time; the anonymous part (RssAnon, sampled every 2 ms) is the memory a run really holds.
        peak_anon, done = [0], threading.Event()

        def sample():
            while not done.is_set():
                peak_anon[0] = max(peak_anon[0], _rss_anon_kib())
                done.wait(0.002)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        shape = build_head_input(Path(a._child[0]), a.datasets, a._child[1], a.per_layer)
        done.set()
        thread.join()
        print(json.dumps({"shape": list(shape), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                          "peak_anon_mib": round(max(peak_anon[0], _rss_anon_kib()) / 1024, 1)}))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write_caches(Path(tmp), a.datasets, a.n_train, a.n_val, a.layers, a.hidden, a.seed)
        cache_mib = sum(f.stat().st_size for f in Path(tmp).rglob("features.npy")) / 2**20
        out = {"cache_mib": round(cache_mib, 1), "args": {k: v for k, v in vars(a).items() if k != "_child"}}
        for mode in MODES:
            proc = subprocess.run([sys.executable, __file__, "--datasets", str(a.datasets), "--per_layer",
                                   str(a.per_layer), "--_child", tmp, mode], capture_output=True, text=True, check=True,
                                  env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
            out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        for key in ("peak_rss_mib", "peak_anon_mib"):
            out[f"{key}_ratio_concatenate_over_memmap"] = round(out["concatenate"][key] / out["memmap"][key], 2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    from siren.errors import run_main

    raise SystemExit(run_main(main, "bench_memory.py"))
