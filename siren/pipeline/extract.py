"""The extraction engine: texts -> finished feature-cache folders (format: `siren.pipeline.cache`).

Reads: texts (through `siren.data.load_splits`, or given directly to `extract_texts`) and a
backbone (`siren.backbones.load_backbone`, loaded at most once and only if some cache is
missing, stale or damaged). Writes: one cache folder per (backbone, dataset, split, pooling type).

Extraction is length-bucketed (`siren.features.length_batches`: sort by token length, pad to a
fixed ladder of widths, fill a token budget, optionally cap the texts per batch) and streams each batch's rows straight to a
preallocated `features.npy.partial` (positional writes, no mapping kept open), so memory holds
the model and a few batches whatever n is. Done batch indices go to `progress*.json`, written
atomically after the data is fsynced: a run killed at any point (SIGKILL included) resumes
where it stopped on rerun, and because the batches are deterministic the finished arrays are
byte-identical to an uninterrupted run. Two processes writing one folder: the second is refused.

Scale-out: under `torchrun --nproc_per_node N` the batches are dealt round-robin to the ranks;
each rank writes its own shard files, then rank 0 merges them into exactly the folder a single
process writes. Each rank's device is cuda:LOCAL_RANK when CUDA is available.

CLI: `siren extract` (defaults from configs/defaults.yaml, as for training, so `siren train`
reuses these caches).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from siren import config
from siren.errors import SirenError
from siren.features import default_batch_tokens
from siren.fileio import atomic_save_npy, atomic_write_json, file_lock, fsync_dir
from siren.log import log
from siren.pipeline import distributed
from siren.pipeline.cache import (CACHE_DTYPES, FEATURES, IDS, LABELS, MANIFEST, PARTIAL, cache_path, key_manifest,
                                  npy_header, stale_reason)

# Progress is checkpointed (fsync + progress file) at most this often; a crash loses at most
# this much work. Env override for tests.
CHECKPOINT_SECONDS = float(os.environ.get("SIREN_EXTRACT_CHECKPOINT_S", "5"))
# Test hook: SIGKILL this process right after writing (and before checkpointing) this many batches.
_KILL_AFTER_ENV = "SIREN_EXTRACT_KILL_AFTER_BATCHES"


# --------------------------------------------------------------------------- row files and progress

class _RowFile:
    """A preallocated .npy file (n, L, d) written row by row with pwrite: no mapping is kept, so
    written pages live in the page cache, not in this process's memory."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, resume: bool):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        if not (resume and path.is_file() and self._header_ok()):
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=self.shape)
            del mm  # only used to write the header and size the (sparse) file
        self.offset = npy_header(path)[3]
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDWR)

    def _header_ok(self) -> bool:
        try:
            shape, fortran, dtype, _ = npy_header(self.path)
        except (OSError, ValueError):
            return False
        return tuple(shape) == self.shape and dtype == self.dtype and not fortran

    def write_rows(self, rows: np.ndarray, values: np.ndarray) -> None:
        """values[j] goes to row rows[j]; consecutive runs are written in one call."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        j, n = 0, len(rows)
        while j < n:
            k = j + 1
            while k < n and rows[k] == rows[k - 1] + 1:
                k += 1
            os.pwrite(self.fd, values[j:k].tobytes(), self.offset + int(rows[j]) * self.row_bytes)
            j = k

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        data = os.pread(self.fd, (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start,) + self.shape[1:])

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _read_progress(path: Path, key: str) -> set[int]:
    import json

    try:
        with open(path) as f:
            obj = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return set()
    return set(obj.get("done", [])) if isinstance(obj, dict) and obj.get("key") == key else set()


# --------------------------------------------------------------------------- the plan

@dataclass
class _Plan:
    """Which rows each batch holds and where this rank writes them.

    token_ids: n int32 arrays; lengths (n,); batches: index arrays, longest first; mine: this
    rank's batch indices; targets: {batch: row positions in this rank's file}; shard_n: rows in
    this rank's file; suffix: "" for one process, ".rank<r>-of-<w>" for a shard; key: identifies
    the plan, so a progress file is only resumed under the same plan."""

    token_ids: list
    lengths: np.ndarray
    batches: list
    mine: list
    targets: dict
    shard_n: int
    suffix: str
    key: str


def _make_plan(features, texts: list[str], manifest: Mapping, batch_tokens: int, batch_size: int | None,
               rank: int, world: int) -> _Plan:
    import hashlib
    import json

    from siren.features import length_batches

    n = len(texts)
    # Token ids as int32 arrays, tokenised in chunks: ~4 bytes a token, small next to the features.
    token_ids = []
    for s in range(0, n, 2048):
        token_ids.extend(np.asarray(t, dtype=np.int32) for t in features.tokenize(texts[s:s + 2048]))
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=n)
    batches = length_batches(lengths, batch_tokens, max_batch_size=batch_size) if n else []
    mine = list(range(rank, len(batches), world))  # this rank's batches, longest first
    if world == 1:  # rows go to their original positions
        targets, shard_n = {b: batches[b] for b in mine}, n
    else:  # rows go to consecutive positions of this rank's shard
        targets, shard_n = {}, 0
        for b in mine:
            targets[b] = np.arange(shard_n, shard_n + len(batches[b]))
            shard_n += len(batches[b])
    h = hashlib.sha256(json.dumps({"m": dict(manifest), "rank": rank, "world": world, "bt": batch_tokens,
                                   "bs": batch_size}, sort_keys=True).encode())
    for b in batches:
        h.update(np.asarray(b, dtype=np.int64).tobytes())
        h.update(b"|")
    return _Plan(token_ids, lengths, batches, mine, targets, shard_n,
                 "" if world == 1 else f".rank{rank}-of-{world}", h.hexdigest())


# --------------------------------------------------------------------------- the stages of extract_texts

def _open_outputs(stack: contextlib.ExitStack, folders: dict[str, Path], plan: _Plan, row_shape, cache_dtype: str,
                  rank: int) -> tuple[dict[str, _RowFile], set[int]]:
    """Lock each folder (rank 0), mark it unfinished, open its partial file; returns the files
    and the batches every folder already holds (resumed from progress files)."""
    files, done = {}, None
    for rep, folder in folders.items():
        if rank == 0:
            stack.enter_context(file_lock(folder / ".lock", wait=False, what=str(folder)))
            if (folder / MANIFEST).exists():
                (folder / MANIFEST).unlink()  # from now on the folder is unfinished
                fsync_dir(folder)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / (PARTIAL + plan.suffix)
        rep_done = _read_progress(folder / f"progress{plan.suffix}.json", plan.key) if partial.is_file() else set()
        files[rep] = _RowFile(partial, (plan.shard_n,) + tuple(row_shape), CACHE_DTYPES[cache_dtype],
                              resume=bool(rep_done))
        stack.callback(files[rep].close)
        done = rep_done if done is None else done & rep_done
    return files, done or set()


def _compute(features, plan: _Plan, files: dict[str, _RowFile], done: set[int], folders: dict[str, Path],
             progress_desc: str | None, rank: int, world: int) -> None:
    """Run every batch of this rank not in `done`, writing rows and checkpointing progress."""
    from tqdm.auto import tqdm

    todo = [b for b in plan.mine if b not in done]
    if done:
        log(f"resuming {', '.join(map(str, folders.values()))}: {len(done)} of {len(plan.mine)} batches "
            "already done", all_ranks=True)

    def checkpoint():
        for rep, f in files.items():
            f.sync()
            atomic_write_json(folders[rep] / f"progress{plan.suffix}.json",
                              {"key": plan.key, "total": len(plan.mine), "done": sorted(done)}, indent=None)

    kill_after = int(os.environ.get(_KILL_AFTER_ENV, "0") or 0)
    real_tokens = sum(int(plan.lengths[i]) for b in todo for i in plan.batches[b])
    desc = (progress_desc or "extract") + (f" [rank 0 of {world}]" if world > 1 else "")
    bar = tqdm(total=sum(len(plan.batches[b]) for b in todo), unit="text", desc=desc,
               disable=rank != 0 or not todo, dynamic_ncols=True, mininterval=1.0)
    seen_tokens, t0, last_ckpt, computed = 0, time.time(), time.time(), 0
    try:
        for b in todo:
            idx = plan.batches[b]
            out = features([plan.token_ids[i] for i in idx])
            for rep, f in files.items():
                f.write_rows(plan.targets[b], out[rep].numpy())
            computed += 1
            if kill_after and computed >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die before checkpointing
            done.add(b)
            seen_tokens += int(plan.lengths[idx].sum())
            now = time.time()
            if now - last_ckpt >= CHECKPOINT_SECONDS:
                checkpoint()
                last_ckpt = now
            bar.update(len(idx))
            rate = max(now - t0, 1e-9)
            bar.set_postfix_str(f"{bar.n / rate:.1f} texts/s, {seen_tokens / rate:.0f} tok/s "
                                f"[{seen_tokens}/{real_tokens} tok]", refresh=False)
    finally:
        bar.close()
    checkpoint()


def _finish(stack: contextlib.ExitStack, folders: dict[str, Path], files: dict[str, _RowFile], plan: _Plan,
            manifests: dict[str, dict], labels: np.ndarray, ids: list[str], info: dict, world: int) -> None:
    """Rank 0: merge shards, write labels and ids, move the features into place, then the
    manifest (last: it marks the folder finished), and drop the progress files."""
    for rep, folder in folders.items():
        final = files[rep]
        if world > 1:
            final = _merge_shards(folder, plan.batches, world, (len(ids),) + final.shape[1:], final.dtype)
            stack.callback(final.close)
        final.sync()
        atomic_save_npy(folder / LABELS, labels)
        atomic_save_npy(folder / IDS, np.asarray(ids, dtype=str) if ids else np.zeros(0, dtype="<U1"))
        os.replace(final.path, folder / FEATURES)
        atomic_write_json(folder / MANIFEST, {**manifests[rep], **info})
        fsync_dir(folder)
        for stale in list(folder.glob("progress*.json")) + list(folder.glob(PARTIAL + "*")):
            stale.unlink(missing_ok=True)


def _merge_shards(folder: Path, batches: list[np.ndarray], world: int, shape, dtype, chunk_rows: int = 256) -> _RowFile:
    """Rank 0: copy each rank's shard rows to their original positions in features.npy.partial."""
    final = _RowFile(folder / PARTIAL, shape, dtype, resume=False)
    for r in range(world):
        rows = [batches[b] for b in range(r, len(batches), world)]
        rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        shard = _RowFile(folder / f"{PARTIAL}.rank{r}-of-{world}", (len(rows),) + tuple(shape[1:]), dtype, resume=True)
        try:
            for s in range(0, len(rows), chunk_rows):
                e = min(s + chunk_rows, len(rows))
                final.write_rows(rows[s:e], shard.read_rows(s, e))
        finally:
            shard.close()
    return final


def extract_texts(features, texts, out_dir, *, manifest: dict, labels, ids, batch_tokens: int | None = None,
                  batch_size: int | None = None, cache_dtype: str | None = None, progress_desc: str | None = None) -> None:
    """Compute every pooling type of `features` for `texts` in one forward per batch and write one
    finished cache folder per pooling type.

    features: a `siren.features.LayerFeatures` (its pooling types, layers, max_length are used).
    texts, labels, ids: sequences of length n, in the order rows are stored.
    out_dir: {pooling type: folder}, or one folder when `features` has a single pooling type.
    manifest: the caller's part of the manifest (backbone, model_id, revision, dataset, split);
        the fields derived from the arguments (see `cache.key_manifest`) are added here.
    batch_tokens: padded tokens per batch (None: 2048 on CPU, 16384 on GPU); batch_size: texts
        per batch at most (None: no cap); cache_dtype None: the config's. Under torchrun, every rank
        calls this with the same arguments.
    """
    cache_dtype = config.default("cache_dtype") if cache_dtype is None else cache_dtype
    if cache_dtype not in CACHE_DTYPES:
        raise SirenError(f"unknown cache dtype {cache_dtype!r}: use float16 or float32")
    reps = tuple(features.pooling_types)
    if not isinstance(out_dir, Mapping):
        if len(reps) != 1:
            raise SirenError(f"out_dir must map each pooling type to a folder when extracting {reps}")
        out_dir = {reps[0]: out_dir}
    folders = {rep: Path(out_dir[rep]) for rep in reps}
    texts, ids = [str(t) for t in texts], [str(i) for i in ids]
    labels = np.full(len(texts), -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if not (len(texts) == len(ids) == len(labels)):
        raise SirenError(f"texts, labels and ids differ in length ({len(texts)}, {len(labels)}, {len(ids)})")
    batch_tokens = batch_tokens or default_batch_tokens(features.device)
    row_shape = (len(features.layers), int(features.model.config.hidden_size))  # (L, d)
    dtype = next(features.model.parameters()).dtype
    rank, world = distributed.rank_world()
    start = time.time()
    manifests = {rep: key_manifest(manifest, pooling_type=rep, texts=texts, labels=labels, ids=ids,
                                   max_length=features.max_length, dtype=dtype, cache_dtype=cache_dtype)
                 for rep in reps}
    plan = _make_plan(features, texts, manifests[reps[0]], batch_tokens, batch_size, rank, world)

    with contextlib.ExitStack() as stack:
        files, done = _open_outputs(stack, folders, plan, row_shape, cache_dtype, rank)
        _compute(features, plan, files, done, folders, progress_desc, rank, world)
        distributed.barrier(world)
        if rank == 0:
            info = {"layers": list(features.layers), "num_layers": features.num_layers, "hidden_size": row_shape[1],
                    "shape": [len(texts), *row_shape], "batch_tokens": int(batch_tokens), "batch_size": batch_size,
                    "world_size": world, "seconds": round(time.time() - start, 2),
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            _finish(stack, folders, files, plan, manifests, labels, ids, info, world)
        distributed.barrier(world)


# --------------------------------------------------------------------------- ensure_features

@dataclass
class CacheEntry:
    """One finished cache folder and how `ensure_features` got it. Path-like (its folder)."""

    dataset: str
    split: str
    pooling_type: str
    folder: Path
    n: int
    status: str  # "cached" | "extracted" | "missing" (only from cached_only)
    seconds: float

    def __fspath__(self) -> str:
        return str(self.folder)


def _stale_folders(cache_dir, model: str, wanted: dict[str, dict], world: int, quiet: bool = False) -> dict[str, Path]:
    """{pooling type: folder} of the caches that must be (re)extracted, each with its reason
    logged (unless quiet); rank 0 decides for every rank."""
    todo = {}
    for rep, manifest in wanted.items():
        folder = cache_path(cache_dir, model, manifest["dataset"], manifest["split"], rep)
        reason = distributed.from_rank0(stale_reason(folder, manifest), world)
        if reason is not None:
            if not quiet:
                log(f"extracting {manifest['dataset']}/{manifest['split']}/{rep}: {reason}")
            todo[rep] = folder
    return todo


def ensure_features(model: str, datasets: list[str], *, splits=("train", "validation", "test"),
                    pooling_types=None, data_dir=None, seed=None, val_ratio=None, max_per_split=None,
                    cache_dir=None, batch_tokens=None, batch_size=None, dtype=None, device=None,
                    cache_dtype=None, max_length=None, backbone=None,
                    trust_remote_code: bool | None = None, cached_only: bool = False) -> dict[tuple[str, str, str], CacheEntry]:
    """(dataset, split, pooling type) -> finished cache folder, extracting what is missing, stale
    or damaged.

    The backbone is loaded at most once, and only if some cache must be (re)extracted (or the
    given `backbone` is used). Splits a dataset does not have (eval-only sets have only
    "test") are skipped. Under torchrun every rank calls this; ranks share the work.
    cached_only: extract nothing (a cheap check: no backbone is loaded); what would be extracted
    comes back with status "missing". A setting left None is the config's (`siren extract`'s).
    """
    from siren.backbones import resolve, resolve_dtype
    from siren.data import load_splits
    from siren.features import check_pooling_types

    given = dict(pooling_types=pooling_types, seed=seed, val_ratio=val_ratio, cache_dtype=cache_dtype,
                 max_length=max_length, trust_remote_code=trust_remote_code)
    cfg = config.load("extract", {k: v for k, v in given.items() if v is not None})
    pooling_types = check_pooling_types(cfg.pooling_types)
    seed, val_ratio, cache_dtype, max_length = cfg.seed, cfg.val_ratio, cfg.cache_dtype, cfg.max_length
    trust_remote_code = cfg.trust_remote_code
    if cache_dtype not in CACHE_DTYPES:
        raise SirenError(f"unknown cache dtype {cache_dtype!r}: use float16 or float32")
    rank, world, local_rank = distributed.init()
    device = distributed.device_for_rank(device, local_rank, world)
    source = backbone.source if backbone is not None else resolve(model)
    forward_dtype = next(backbone.model.parameters()).dtype if backbone is not None else resolve_dtype(dtype, device, model)
    loaded = [backbone]

    def get_backbone():
        if loaded[0] is None:
            from siren.backbones import load_backbone

            t = time.time()
            loaded[0] = load_backbone(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
            log(f"loaded backbone {model} ({source.model_id}) on {device} in {time.time() - t:.1f} s")
        return loaded[0]

    entries = {}
    for dataset in datasets:
        frames = load_splits(dataset, data_dir=data_dir, seed=seed, val_ratio=val_ratio, max_per_split=max_per_split)
        for split in (s for s in splits if s in frames):
            frame = frames[split]
            texts, labels, ids = frame["text"].tolist(), frame["label"].to_numpy(np.int64), frame["id"].astype(str).tolist()
            base = {"backbone": model, "model_id": source.model_id, "revision": source.revision,
                    "dataset": dataset, "split": split}
            wanted = {rep: key_manifest(base, pooling_type=rep, texts=texts, labels=labels, ids=ids,
                                        max_length=max_length, dtype=forward_dtype, cache_dtype=cache_dtype)
                      for rep in pooling_types}
            todo = _stale_folders(cache_dir, model, wanted, world, quiet=cached_only)
            for rep in pooling_types:
                if rep not in todo:
                    folder = cache_path(cache_dir, model, dataset, split, rep)
                    entries[(dataset, split, rep)] = CacheEntry(dataset, split, rep, folder, len(ids), "cached", 0.0)
            if cached_only:
                for rep, folder in todo.items():
                    entries[(dataset, split, rep)] = CacheEntry(dataset, split, rep, folder, len(ids), "missing", 0.0)
            if not todo or cached_only:
                continue
            from siren.features import LayerFeatures

            bb = get_backbone()
            lf = LayerFeatures(bb.model, bb.tokenizer, pooling_types=tuple(todo), max_length=max_length)
            t = time.time()
            extract_texts(lf, texts, todo, manifest=base, labels=labels, ids=ids, batch_tokens=batch_tokens,
                          batch_size=batch_size, cache_dtype=cache_dtype, progress_desc=f"{dataset}/{split}")
            for rep, folder in todo.items():
                entries[(dataset, split, rep)] = CacheEntry(dataset, split, rep, folder, len(ids), "extracted",
                                                            time.time() - t)
    return entries


# --------------------------------------------------------------------------- CLI: siren extract

def add_arguments(parser) -> None:
    parser.add_argument("--splits", nargs="+", choices=["train", "validation", "test"],
                        help="default: train validation test")
    config.add_flags(parser, "extract")


def run(args) -> int:
    from siren import checks
    from siren.pipeline.cache import default_cache_dir

    cfg = config.from_args("extract", args)  # the training defaults, so `siren train` reuses these caches
    if args.datasets is None:
        cfg = cfg.replace(datasets=config.default_datasets(cfg.data_dir))
    # Every value checked before data or the backbone loads.
    checks.check_device(cfg.device)
    checks.check_writable_dir(cfg.cache_dir or default_cache_dir(), "--cache_dir")
    start = time.time()
    entries = extract(cfg, splits=tuple(args.splits or ("train", "validation", "test")))
    print_entries(entries, time.time() - start)
    return 0


def extract(cfg, splits) -> list[CacheEntry]:
    """ensure_features for an ExtractConfig; ends the process group; entries on rank 0 only."""
    entries = ensure_features(cfg.model, cfg.datasets, splits=splits, pooling_types=tuple(cfg.pooling_types),
                              data_dir=cfg.data_dir, seed=cfg.seed, val_ratio=cfg.val_ratio,
                              max_per_split=cfg.max_per_split, cache_dir=cfg.cache_dir,
                              batch_tokens=cfg.batch_tokens, batch_size=cfg.batch_size, dtype=cfg.dtype,
                              device=cfg.device, cache_dtype=cfg.cache_dtype, max_length=cfg.max_length,
                              trust_remote_code=cfg.trust_remote_code)
    rank, world = distributed.rank_world()
    distributed.shutdown(world)
    return list(entries.values()) if rank == 0 else []


def print_entries(entries: list[CacheEntry], seconds: float) -> None:
    if not entries:
        return
    header = ("dataset", "split", "pooling_type", "n", "shape", "status", "seconds")
    rows = [(e.dataset, e.split, e.pooling_type, str(e.n),
             "x".join(map(str, npy_header(e.folder / FEATURES)[0])), e.status, f"{e.seconds:.1f}") for e in entries]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"cache: {entries[0].folder.parents[3]}  total {seconds:.1f} s")
