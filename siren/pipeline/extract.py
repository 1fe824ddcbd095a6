"""Batching and the on-disk feature cache, around `siren.features.LayerFeatures`.

Reads: texts (through `siren.data.load_splits`, or given directly to `extract_texts`) and a
backbone (`siren.backbones.load_backbone`, loaded at most once and only if some cache is
missing or stale).

Writes, per (backbone, dataset, split, rep type), one folder
`<cache_dir>/<backbone>/<dataset>/<split>/<rep type>/` (default cache_dir:
`$SIREN_CACHE/features`, see `siren.backbones.cache_root`) holding

- `features.npy`  (n, L, d) float16 (default) or float32, rows in the split's order; read it
  with `np.load(mmap_mode="r")` (`load_features`);
- `labels.npy`    (n,) int64, 1 = harmful;
- `ids.npy`       (n,) str, the split's row ids;
- `manifest.json` what the features were computed from: backbone name, model_id and revision,
  dataset, split, sha256 of ids / texts / labels, n, max_length, the forward's torch dtype,
  the cache dtype, rep type, layers, `NORMALIZATION_VERSION` and `EXTRACT_VERSION`.

A folder is finished exactly when `manifest.json` exists: it is written last, atomically (temp
file + `os.replace`), and deleted first when a folder is (re)written. A cache is reused only
when its stored manifest equals the wanted one on every key field; otherwise it is
re-extracted and the differing fields are logged.

Extraction is length-bucketed (`length_batches`: sort by token length, fill a token budget)
and streams each batch's rows straight to a preallocated `features.npy.partial` (positional
writes, no mapping kept open), so memory holds the model and a few batches whatever n is. Done
batch indices go to `progress*.json`, written atomically after the data is fsynced: a run
killed at any point (SIGKILL included) resumes where it stopped on rerun, and because the
batches are deterministic the finished arrays are byte-identical to an uninterrupted run.

Scale-out: under `torchrun --nproc_per_node N` (env RANK / WORLD_SIZE / LOCAL_RANK) the batches
are dealt round-robin to the ranks; each rank writes its own shard files, then rank 0 merges
them into exactly the folder a single process writes. Each rank's device is cuda:LOCAL_RANK
when CUDA is available.

CLI: `siren extract --model M --datasets D ...` (see `add_arguments`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from siren.errors import SirenError

# Bump when anything here changes the bytes written for the same inputs (part of every manifest).
EXTRACT_VERSION = 1
FEATURES, LABELS, IDS, MANIFEST = "features.npy", "labels.npy", "ids.npy", "manifest.json"
PARTIAL = "features.npy.partial"
CACHE_DTYPES = {"float16": np.float16, "float32": np.float32}
# Progress is checkpointed (fsync + progress file) at most this often; a crash loses at most
# this much work. Env override for tests.
CHECKPOINT_SECONDS = float(os.environ.get("SIREN_EXTRACT_CHECKPOINT_S", "5"))
# Test hook: SIGKILL this process right after writing (and before checkpointing) this many batches.
_KILL_AFTER_ENV = "SIREN_EXTRACT_KILL_AFTER_BATCHES"
# Manifest fields that say how a cache was made but do not change its values.
# Padded tokens per batch. On CPU, big batches are no faster (smollm2-135m on 2 cores: ~same
# tokens/s at 4k and 16k) but cost activation memory (+400 MiB at 16k) and padding: on 512
# mixed texts, padded/real is 1.10 at 2048, 1.20 at 4096, 1.67 at 16384 (it falls as n grows:
# 1.02 at 2048 for 4096 texts). GPUs want bigger batches.
CPU_BATCH_TOKENS, GPU_BATCH_TOKENS = 2048, 16384
INFO_FIELDS = ("layers", "num_layers", "hidden_size", "shape", "batch_tokens", "world_size", "seconds", "created")


def default_batch_tokens(device) -> int:
    return GPU_BATCH_TOKENS if str(device).startswith("cuda") else CPU_BATCH_TOKENS


def _log(msg: str) -> None:
    if _rank_world()[0] == 0:
        print(f"[siren] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- paths and manifests

def _safe_name(model: str) -> str:
    """A backbone name as one folder name: "Qwen/Qwen3-0.6B" -> "Qwen--Qwen3-0.6B"; long local
    paths keep their tail and gain a short hash so that two folders never share a cache."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/").replace("/", "--")).strip("._") or "model"
    if len(safe) > 80 or model.startswith(("/", ".", "~")):
        digest = hashlib.sha256(model.encode()).hexdigest()[:10]
        safe = f"{safe[-60:].lstrip('-_.')}-{digest}"
    return safe


def cache_path(cache_dir, model: str, dataset: str, split: str, rep_type: str) -> Path:
    """The cache folder of (backbone, dataset, split, rep type) under cache_dir (None: default)."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / _safe_name(model) / dataset / split / rep_type


def default_cache_dir() -> Path:
    from siren.backbones import cache_root

    return cache_root() / "features"


def _sha256_json(values) -> str:
    return hashlib.sha256(json.dumps(values, ensure_ascii=False).encode()).hexdigest()


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def key_manifest(base: Mapping, *, rep_type: str, texts: Sequence[str], labels: Sequence[int],
                 ids: Sequence[str], max_length: int, dtype, cache_dtype: str) -> dict:
    """The fields a cache must match to be reused. base: backbone, model_id, revision, dataset,
    split (whatever the caller knows); the rest is derived from the arguments."""
    from siren.features import NORMALIZATION_VERSION

    return {
        **dict(base),
        "rep_type": rep_type,
        "n": len(ids),
        "ids_sha256": _sha256_json([str(i) for i in ids]),
        "texts_sha256": _sha256_json([str(t) for t in texts]),
        "labels_sha256": _sha256_json([int(y) for y in labels]),
        "max_length": int(max_length),
        "dtype": _dtype_name(dtype),
        "cache_dtype": cache_dtype,
        "normalization_version": NORMALIZATION_VERSION,
        "extract_version": EXTRACT_VERSION,
    }


def read_manifest(folder) -> dict | None:
    try:
        with open(Path(folder) / MANIFEST) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def stale_reason(folder, wanted: Mapping) -> str | None:
    """None when the folder holds a finished cache made from `wanted`; else why not."""
    folder = Path(folder)
    stored = read_manifest(folder)
    if stored is None:
        return "no finished cache" if not (folder / PARTIAL).exists() and not list(folder.glob("progress*.json")) \
            else "unfinished extraction (no manifest)"
    diff = [k for k in wanted if stored.get(k) != wanted[k]]
    if diff:
        shown = ", ".join(f"{k}: {stored.get(k)!r} -> {wanted[k]!r}" for k in diff[:4])
        return f"manifest differs ({shown})"
    if not all((folder / name).is_file() for name in (FEATURES, LABELS, IDS)):
        return "manifest present but arrays missing"
    return None


@dataclass
class FeatureSet:
    """A finished cache folder. X: (n, L, d) read-only memmap; y: (n,) int64; ids: (n,) str."""

    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    manifest: dict
    folder: Path = field(default=None)

    def __len__(self) -> int:
        return len(self.y)


def load_features(folder) -> FeatureSet:
    """Open a finished cache folder (memory-mapped); SirenError if it is not finished."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise SirenError(f"{folder} holds no finished feature cache (no manifest.json): run `siren extract` first")
    X = np.load(folder / FEATURES, mmap_mode="r")
    y = np.load(folder / LABELS)
    ids = np.load(folder / IDS)
    if not (len(X) == len(y) == len(ids) == manifest.get("n", len(y))):
        raise SirenError(f"{folder}: arrays disagree in length ({len(X)}, {len(y)}, {len(ids)}); delete the folder")
    return FeatureSet(X, y.astype(np.int64, copy=False), ids, manifest, folder)


# --------------------------------------------------------------------------- small file helpers

def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _folder_lock(folder: Path, enabled: bool = True):
    """Refuse, with a clear error, a second process writing the same cache folder."""
    if not enabled:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SirenError(f"another process is writing {folder}; wait for it or stop it") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of a .npy file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        return tuple(shape), fortran, dtype, f.tell()


class _RowFile:
    """A preallocated .npy file (n, L, d) written row by row with pwrite: no mapping is kept, so
    written pages live in the page cache, not in this process's memory."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, resume: bool):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        if not (resume and path.is_file() and self._header_ok()):
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=self.shape)
            del mm  # only used to write the header and size the (sparse) file
        self.offset = _npy_header(path)[3]
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDWR)

    def _header_ok(self) -> bool:
        try:
            shape, fortran, dtype, _ = _npy_header(self.path)
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


# --------------------------------------------------------------------------- distributed

def _rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises torch.distributed under torchrun if needed
    (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world <= 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=6))
    return dist.get_rank(), dist.get_world_size(), local


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _from_rank0(obj, world: int):
    if world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- extraction

def _plan_key(manifest: Mapping, batches: list[np.ndarray], rank: int, world: int, batch_tokens: int) -> str:
    """Identifies one deterministic batch plan: a progress file is only resumed under the same key."""
    h = hashlib.sha256(json.dumps({"m": manifest, "rank": rank, "world": world, "bt": batch_tokens}, sort_keys=True).encode())
    for b in batches:
        h.update(np.asarray(b, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _read_progress(path: Path, key: str) -> set[int]:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return set()
    return set(obj.get("done", [])) if obj.get("key") == key else set()


def _write_progress(path: Path, key: str, done: set[int], total: int) -> None:
    _atomic_write(path, json.dumps({"key": key, "total": total, "done": sorted(done)}).encode())


def extract_texts(features, texts, out_dir, *, manifest: dict, labels, ids, batch_tokens: int | None = None,
                  cache_dtype: str = "float16", progress_desc: str | None = None) -> None:
    """Compute every rep type of `features` for `texts` in one forward per batch and write one
    finished cache folder per rep type.

    features: a `siren.features.LayerFeatures` (its rep types, layers, max_length are used).
    texts, labels, ids: sequences of length n, in the order rows are stored.
    out_dir: {rep type: folder}, or one folder when `features` has a single rep type.
    manifest: the caller's part of the manifest (backbone, model_id, revision, dataset, split);
        the fields derived from the arguments (see `key_manifest`) are added here.
    batch_tokens: padded tokens per batch (None: 2048 on CPU, 16384 on GPU).
    Under torchrun, every rank calls this with the same arguments.
    """
    from tqdm.auto import tqdm

    from siren.features import length_batches

    if cache_dtype not in CACHE_DTYPES:
        raise SirenError(f"unknown cache dtype {cache_dtype!r}: use float16 or float32")
    reps = tuple(features.rep_types)
    if not isinstance(out_dir, Mapping):
        if len(reps) != 1:
            raise SirenError(f"out_dir must map each rep type to a folder when extracting {reps}")
        out_dir = {reps[0]: out_dir}
    folders = {rep: Path(out_dir[rep]) for rep in reps}
    texts, ids = [str(t) for t in texts], [str(i) for i in ids]
    labels = np.full(len(texts), -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if not (len(texts) == len(ids) == len(labels)):
        raise SirenError(f"texts, labels and ids differ in length ({len(texts)}, {len(labels)}, {len(ids)})")
    if batch_tokens is None:
        batch_tokens = default_batch_tokens(features.device)
    n, L = len(texts), len(features.layers)
    d = int(features.model.config.hidden_size)
    shape = (n, L, d)
    dtype = next(features.model.parameters()).dtype
    rank, world = _rank_world()
    start = time.time()

    manifests = {rep: key_manifest(manifest, rep_type=rep, texts=texts, labels=labels, ids=ids,
                                   max_length=features.max_length, dtype=dtype, cache_dtype=cache_dtype)
                 for rep in reps}
    # Token ids as int32 arrays, tokenised in chunks: ~4 bytes a token, small next to the features.
    token_ids = []
    for s in range(0, n, 2048):
        token_ids.extend(np.asarray(t, dtype=np.int32) for t in features.tokenize(texts[s:s + 2048]))
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=n)
    batches = length_batches(lengths, batch_tokens) if n else []
    mine = list(range(rank, len(batches), world))  # batch indices of this rank, longest first
    # Where this rank's rows go: original positions (1 process) or consecutive shard rows.
    if world == 1:
        targets = {b: batches[b] for b in mine}
        shard_n = n
    else:
        targets, offset = {}, 0
        for b in mine:
            targets[b] = np.arange(offset, offset + len(batches[b]))
            offset += len(batches[b])
        shard_n = offset
    suffix = "" if world == 1 else f".rank{rank}-of-{world}"

    with contextlib.ExitStack() as stack:
        for rep in reps:
            stack.enter_context(_folder_lock(folders[rep], enabled=rank == 0))
        files, progress_paths, done = {}, {}, None
        for rep, folder in folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            if rank == 0:
                with contextlib.suppress(FileNotFoundError):
                    (folder / MANIFEST).unlink()  # from now on the folder is unfinished
                    _fsync_dir(folder)
            key = _plan_key(manifests[rep], batches, rank, world, batch_tokens)
            progress_paths[rep] = (folder / f"progress{suffix}.json", key)
            rep_done = _read_progress(folder / f"progress{suffix}.json", key)
            partial = folder / (PARTIAL + suffix)
            if not partial.is_file():
                rep_done = set()
            files[rep] = _RowFile(partial, (shard_n, L, d), CACHE_DTYPES[cache_dtype], resume=bool(rep_done))
            stack.callback(files[rep].close)
            done = rep_done if done is None else done & rep_done
        done = done or set()
        todo = [b for b in mine if b not in done]
        if done:
            print(f"[siren] rank {rank}: resuming {', '.join(map(str, folders.values()))}: "
                  f"{len(done)} of {len(mine)} batches already done", file=sys.stderr, flush=True)

        def checkpoint():
            for rep in reps:
                files[rep].sync()
                path, key = progress_paths[rep]
                _write_progress(path, key, done, len(mine))

        kill_after = int(os.environ.get(_KILL_AFTER_ENV, "0") or 0)
        real_tokens = sum(int(lengths[i]) for b in todo for i in batches[b])
        desc = (progress_desc or "extract") + (f" [rank 0 of {world}]" if world > 1 else "")
        bar = tqdm(total=sum(len(batches[b]) for b in todo), unit="text", desc=desc,
                   disable=rank != 0 or not todo, dynamic_ncols=True, mininterval=1.0)
        seen_tokens, t0, last_ckpt, computed = 0, time.time(), time.time(), 0
        try:
            for b in todo:
                idx = batches[b]
                out = features([token_ids[i] for i in idx])
                for rep in reps:
                    files[rep].write_rows(targets[b], out[rep].numpy())
                computed += 1
                if kill_after and computed >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)  # test hook: die before checkpointing
                done.add(b)
                seen_tokens += int(lengths[idx].sum())
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
        _barrier(world)

        if rank == 0:
            for rep, folder in folders.items():
                final = files[rep]
                if world > 1:
                    final = _merge_shards(folder, batches, world, (n, L, d), CACHE_DTYPES[cache_dtype])
                    stack.callback(final.close)
                final.sync()
                _atomic_save_npy(folder / LABELS, labels)
                _atomic_save_npy(folder / IDS, np.asarray(ids, dtype=str) if n else np.zeros(0, dtype="<U1"))
                os.replace(final.path, folder / FEATURES)
                stored = {**manifests[rep], "layers": list(features.layers), "num_layers": features.num_layers,
                          "hidden_size": d, "shape": list(shape), "batch_tokens": int(batch_tokens),
                          "world_size": world, "seconds": round(time.time() - start, 2),
                          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
                _atomic_write(folder / MANIFEST, (json.dumps(stored, indent=2) + "\n").encode())
                _fsync_dir(folder)
                for stale in list(folder.glob("progress*.json")) + list(folder.glob(PARTIAL + "*")):
                    stale.unlink(missing_ok=True)
        _barrier(world)


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


# --------------------------------------------------------------------------- ensure_features

@dataclass
class CacheEntry:
    dataset: str
    split: str
    rep_type: str
    folder: Path
    n: int
    status: str  # "cached" | "extracted"
    seconds: float


def _device_for_rank(device: str | None, local_rank: int, world: int) -> str:
    from siren.backbones import resolve_device

    device = resolve_device(device)
    if device == "cuda" and world > 1:
        return f"cuda:{local_rank}"
    return device


def ensure_caches(model: str, datasets: list[str], *, splits=("train", "validation", "test"),
                  rep_types=("residual_mean",), data_dir=None, seed=42, val_ratio=0.2, max_per_split=None,
                  cache_dir=None, batch_tokens=None, dtype=None, device=None, cache_dtype="float16",
                  max_length=512, backbone=None) -> list[CacheEntry]:
    """`ensure_features` with a record per folder (cached or extracted, seconds): for the CLI."""
    from siren.backbones import resolve, resolve_dtype
    from siren.data import load_splits
    from siren.features import check_rep_types

    rep_types = check_rep_types(rep_types)
    if cache_dtype not in CACHE_DTYPES:
        raise SirenError(f"unknown cache dtype {cache_dtype!r}: use float16 or float32")
    rank, world, local_rank = init_distributed()
    device = _device_for_rank(device, local_rank, world)
    if backbone is not None:
        source = backbone.source
        torch_dtype = next(backbone.model.parameters()).dtype
    else:
        source = resolve(model)
        torch_dtype = resolve_dtype(dtype, device)
    base_common = {"backbone": model, "model_id": source.model_id, "revision": source.revision}
    loaded = [backbone]

    def get_backbone():
        if loaded[0] is None:
            from siren.backbones import load_backbone

            t = time.time()
            loaded[0] = load_backbone(model, device=device, dtype=dtype)
            _log(f"loaded backbone {model} ({source.model_id}) on {device} in {time.time() - t:.1f} s")
        return loaded[0]

    entries = []
    for dataset in datasets:
        frames = load_splits(dataset, data_dir=data_dir, seed=seed, val_ratio=val_ratio, max_per_split=max_per_split)
        for split in splits:
            if split not in frames:
                continue  # e.g. eval-only datasets have only "test"
            frame = frames[split]
            texts, labels, ids = frame["text"].tolist(), frame["label"].to_numpy(np.int64), frame["id"].astype(str).tolist()
            base = {**base_common, "dataset": dataset, "split": split}
            todo = {}
            for rep in rep_types:
                folder = cache_path(cache_dir, model, dataset, split, rep)
                wanted = key_manifest(base, rep_type=rep, texts=texts, labels=labels, ids=ids,
                                      max_length=max_length, dtype=torch_dtype, cache_dtype=cache_dtype)
                reason = _from_rank0(stale_reason(folder, wanted), world)
                if reason is None:
                    entries.append(CacheEntry(dataset, split, rep, folder, len(ids), "cached", 0.0))
                else:
                    _log(f"extracting {dataset}/{split}/{rep}: {reason}")
                    todo[rep] = folder
            if not todo:
                continue
            from siren.features import LayerFeatures

            bb = get_backbone()
            lf = LayerFeatures(bb.model, bb.tokenizer, rep_types=tuple(todo), max_length=max_length)
            t = time.time()
            extract_texts(lf, texts, todo, manifest=base, labels=labels, ids=ids, batch_tokens=batch_tokens,
                          cache_dtype=cache_dtype, progress_desc=f"{dataset}/{split}")
            seconds = time.time() - t
            entries.extend(CacheEntry(dataset, split, rep, folder, len(ids), "extracted", seconds)
                           for rep, folder in todo.items())
    return entries


def ensure_features(model: str, datasets: list[str], *, splits=("train", "validation", "test"),
                    rep_types=("residual_mean",), data_dir=None, seed=42, val_ratio=0.2, max_per_split=None,
                    cache_dir=None, batch_tokens=None, dtype=None, device=None, cache_dtype="float16",
                    max_length=512, backbone=None) -> dict[tuple[str, str, str], Path]:
    """(dataset, split, rep type) -> finished cache folder, extracting what is missing or stale.

    The backbone is loaded at most once, and only if some cache must be (re)extracted (or the
    given `backbone` is used). Splits a dataset does not have (eval-only sets have only
    "test") are skipped. Under torchrun every rank calls this; ranks share the work.
    """
    entries = ensure_caches(model, datasets, splits=splits, rep_types=rep_types, data_dir=data_dir, seed=seed,
                            val_ratio=val_ratio, max_per_split=max_per_split, cache_dir=cache_dir,
                            batch_tokens=batch_tokens, dtype=dtype, device=device, cache_dtype=cache_dtype,
                            max_length=max_length, backbone=backbone)
    return {(e.dataset, e.split, e.rep_type): e.folder for e in entries}


# --------------------------------------------------------------------------- CLI: siren extract

def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="registry name, local Hugging Face folder or Hub id")
    parser.add_argument("--datasets", nargs="+", required=True, help="dataset names (see `siren data list`)")
    parser.add_argument("--splits", nargs="+", default=["train", "validation", "test"])
    parser.add_argument("--data_dir", default=None, help="folder of <dataset>/<split>.jsonl (default: $SIREN_DATA_DIR, else the Hub)")
    parser.add_argument("--max_per_split", nargs="+", type=int, help="cap rows per split and dataset (seeded, stratified): one number, or three for train validation test")
    parser.add_argument("--seed", type=int, help="default: configs/defaults.yaml (as for training)")
    parser.add_argument("--val_ratio", type=float)
    parser.add_argument("--rep_types", nargs="+", choices=["residual_mean", "mlp_mean"])
    parser.add_argument("--batch_tokens", type=int, default=None,
                        help=f"padded tokens per batch (default: {CPU_BATCH_TOKENS} on CPU, {GPU_BATCH_TOKENS} on GPU)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="the backbone's dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--cache_dtype", choices=sorted(CACHE_DTYPES))
    parser.add_argument("--max_length", type=int)
    parser.add_argument("--cache_dir", default=None, help="default: $SIREN_CACHE/features")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")


def run(args) -> int:
    from siren import config as cfgmod

    start = time.time()
    # Unset flags take the same defaults as training, so `siren train` reuses these caches.
    cfg = cfgmod.resolve(args, ["seed", "val_ratio", "rep_types", "cache_dtype", "max_length"])
    from siren import checks  # every value checked before data or the backbone loads

    checks.check_max_length(cfg["max_length"])
    checks.check_device(args.device)
    if args.batch_tokens is not None:
        checks.check_positive_int(args.batch_tokens, "--batch_tokens")
    checks.check_writable_dir(args.cache_dir or default_cache_dir(), "--cache_dir")
    entries = ensure_caches(args.model, args.datasets, splits=tuple(args.splits), rep_types=tuple(cfg["rep_types"]),
                            data_dir=args.data_dir, seed=cfg["seed"], val_ratio=cfg["val_ratio"],
                            max_per_split=args.max_per_split, cache_dir=args.cache_dir,
                            batch_tokens=args.batch_tokens, dtype=args.dtype, device=args.device,
                            cache_dtype=cfg["cache_dtype"], max_length=cfg["max_length"])
    rank, world = _rank_world()
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if rank != 0:
        return 0
    rows = []
    for e in entries:
        shape = tuple(np.load(e.folder / FEATURES, mmap_mode="r").shape)
        rows.append((e.dataset, e.split, e.rep_type, str(e.n), "x".join(map(str, shape)), e.status, f"{e.seconds:.1f}"))
    header = ("dataset", "split", "rep_type", "n", "shape", "status", "seconds")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    if entries:
        print(f"cache: {entries[0].folder.parents[3]}  total {time.time() - start:.1f} s")
    return 0
