"""The on-disk feature cache: where a split's features live, what a finished folder holds, and
how training reads them. No backbone and no torch here; `extract.py` writes these folders.

Per (backbone, dataset, split, pooling type) one folder
`<cache_dir>/<model_slug>/<dataset>/<split>/<pooling_type>/` (default cache_dir:
`$SIREN_CACHE/features`) holding

- `features.npy`  (n, L, d) float16 (default) or float32, rows in the split's order; opened
  with `np.load(mmap_mode="r")`, never read whole;
- `labels.npy`    (n,) int64, 1 = harmful;
- `ids.npy`       (n,) str, the split's row ids;
- `manifest.json` what the features were computed from (`key_manifest`: backbone, model_id,
  revision, dataset, split, sha256 of ids / texts / labels, n, max_length, the forward's dtype,
  the cache dtype, pooling type, `NORMALIZATION_VERSION`, `EXTRACT_VERSION`) plus how they were
  made (shape, layers, batch_tokens, world size, seconds, created).

A folder is finished exactly when `manifest.json` exists and the arrays agree with it: the
manifest is written last, atomically, and deleted first when a folder is rewritten. On every
load (`verify`) the arrays are checked against the manifest: features.npy's header shape and
dtype and its file size (a truncated file is caught before it is mapped), and the sha256 of
labels and ids (small). A folder that fails is reported stale, so `ensure_features` extracts it
again; `load_features` refuses it with the reason.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from siren.errors import SirenError

# Bump when anything in extraction changes the bytes written for the same inputs (in every manifest).
EXTRACT_VERSION = 1
FEATURES, LABELS, IDS, MANIFEST = "features.npy", "labels.npy", "ids.npy", "manifest.json"
PARTIAL = "features.npy.partial"
CACHE_DTYPES = {"float16": np.float16, "float32": np.float32}

__all__ = ["cache_path", "default_cache_dir", "key_manifest", "read_manifest", "stale_reason", "verify",
           "FeatureSet", "load_features", "RowStack", "Split", "load_split", "npy_header", "release_pages"]


def default_cache_dir() -> Path:
    from siren.backbones import cache_root

    return cache_root() / "features"


def cache_path(cache_dir, model: str, dataset: str, split: str, pooling_type: str) -> Path:
    """The cache folder of (backbone, dataset, split, pooling type) under cache_dir (None: default)."""
    from siren.backbones import model_slug

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / model_slug(model) / dataset / split / pooling_type


def sha256_json(values) -> str:
    return hashlib.sha256(json.dumps(values, ensure_ascii=False).encode()).hexdigest()


def _ids_sha256(ids) -> str:
    return sha256_json([str(i) for i in ids])


def _labels_sha256(labels) -> str:
    return sha256_json([int(y) for y in labels])


def key_manifest(base: Mapping, *, pooling_type: str, texts: Sequence[str], labels: Sequence[int],
                 ids: Sequence[str], max_length: int, dtype, cache_dtype: str) -> dict:
    """The fields a cache must match to be reused. base: backbone, model_id, revision, dataset,
    split (whatever the caller knows); the rest is derived from the arguments."""
    from siren.features import NORMALIZATION_VERSION

    return {
        **dict(base),
        "pooling_type": pooling_type,
        "n": len(ids),
        "ids_sha256": _ids_sha256(ids),
        "texts_sha256": sha256_json([str(t) for t in texts]),
        "labels_sha256": _labels_sha256(labels),
        "max_length": int(max_length),
        "dtype": str(dtype).replace("torch.", ""),
        "cache_dtype": cache_dtype,
        "normalization_version": NORMALIZATION_VERSION,
        "extract_version": EXTRACT_VERSION,
    }


def read_manifest(folder) -> dict | None:
    try:
        with open(Path(folder) / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict):
        return None
    if "rep_type" in manifest and "pooling_type" not in manifest:  # caches written before the rename
        manifest["pooling_type"] = manifest.pop("rep_type")
    return manifest


def npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of a .npy file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        return tuple(shape), fortran, dtype, f.tell()


def verify(folder, manifest: Mapping) -> str | None:
    """None when the folder's arrays agree with its manifest; else what is wrong."""
    folder = Path(folder)
    missing = [name for name in (FEATURES, LABELS, IDS) if not (folder / name).is_file()]
    if missing:
        return f"manifest present but {', '.join(missing)} missing"
    try:
        shape, fortran, dtype, offset = npy_header(folder / FEATURES)
    except (OSError, ValueError) as err:
        return f"{FEATURES} unreadable ({err})"
    want_shape = tuple(manifest.get("shape") or ())
    want_dtype = CACHE_DTYPES.get(manifest.get("cache_dtype"))
    if shape != want_shape or fortran or want_dtype is None or dtype != np.dtype(want_dtype):
        return f"{FEATURES} is {shape} {dtype}, the manifest says {want_shape} {manifest.get('cache_dtype')}"
    size = (folder / FEATURES).stat().st_size
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < need:
        return f"{FEATURES} is truncated ({size} of {need} bytes): unfinished"
    try:
        labels = np.load(folder / LABELS, allow_pickle=False)
        ids = np.load(folder / IDS, allow_pickle=False)
    except (OSError, ValueError) as err:
        return f"{LABELS} or {IDS} unreadable ({err})"
    n = shape[0] if shape else -1
    if not (len(labels) == len(ids) == n == manifest.get("n")):
        return f"arrays disagree in length (features {n}, labels {len(labels)}, ids {len(ids)}, manifest {manifest.get('n')})"
    if _labels_sha256(labels) != manifest.get("labels_sha256"):
        return f"{LABELS} differs from the manifest's labels"
    if _ids_sha256(ids) != manifest.get("ids_sha256"):
        return f"{IDS} differs from the manifest's ids"
    return None


def stale_reason(folder, wanted: Mapping) -> str | None:
    """None when the folder holds a finished, intact cache made from `wanted`; else why not."""
    folder = Path(folder)
    stored = read_manifest(folder)
    if stored is None:
        unfinished = (folder / PARTIAL).exists() or any(folder.glob("progress*.json"))
        return "unfinished extraction (no manifest)" if unfinished else "no finished cache"
    diff = [k for k in wanted if stored.get(k) != wanted[k]]
    if diff:
        shown = ", ".join(f"{k}: {stored.get(k)!r} -> {wanted[k]!r}" for k in diff[:4])
        return f"manifest differs ({shown})"
    return verify(folder, stored)


@dataclass
class FeatureSet:
    """A finished cache folder. X: (n, L, d) read-only memmap; y: (n,) int64; ids: (n,) str."""

    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    manifest: dict
    folder: Path

    def __len__(self) -> int:
        return len(self.y)


def load_features(folder) -> FeatureSet:
    """Open a finished cache folder (memory-mapped) after `verify`; SirenError if it fails."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise SirenError(f"{folder} holds no finished feature cache (no manifest.json): run `siren extract` first")
    problem = verify(folder, manifest)
    if problem:
        raise SirenError(f"feature cache {folder}: {problem}. Run `siren extract` (or `siren train`) "
                         "again to re-extract it")
    X = np.load(folder / FEATURES, mmap_mode="r")
    y = np.load(folder / LABELS, allow_pickle=False).astype(np.int64, copy=False)
    ids = np.load(folder / IDS, allow_pickle=False)
    return FeatureSet(X, y, ids, manifest, folder)


def release_pages(array) -> None:
    """Drop a read-only memmap's pages from this process's resident set (no-op for other arrays).

    Why: a page of a mapped file that was read once stays in the process's RSS for as long as
    the file is mapped, so reading a cache chunk by chunk still ended with the whole cache
    resident (on 9,991 rows of six datasets, 0.3 GiB held through the head search, growing
    with the rows). The pages stay in the kernel's page cache: reading them again costs a
    page fault, not a disk read. Only for read-only (shared) mappings, where nothing is lost."""
    mm = getattr(array, "_mmap", None)
    if mm is not None and getattr(mm, "closed", False) is False and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


class RowStack:
    """Several (n_i, L, d) arrays (memmaps) seen as one (sum n_i, L, d) array, never copied whole.

    Supports what the probes and `select.aggregate` read: `X[a:b]`, `X[a:b, l]`, `X[:, l0:l1]`
    (a row slice, then any further indices); each returns a fresh array of just those rows, and
    the mapped pages it read are released (`release_pages`), so memory is bounded by the
    caller's chunk, not by n x L x d."""

    def __init__(self, parts: Sequence[np.ndarray]):
        if not parts:
            raise ValueError("RowStack needs at least one array")
        tails = {tuple(p.shape[1:]) for p in parts}
        if len(tails) != 1:
            raise SirenError(f"feature caches disagree in shape {sorted(tails)}: were they made by one backbone?")
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]),) + tails.pop()
        self.dtype = np.result_type(*[p.dtype for p in parts])
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        raise TypeError("RowStack is never materialised whole: index it by rows (X[a:b], X[:, l0:l1])")

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows, rest = key[0], key[1:]
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("RowStack takes a row slice first (X[a:b], X[:, ...])")
        start, stop, _ = rows.indices(self.shape[0])
        pieces, touched = [], []
        for part, s0 in zip(self.parts, self.starts[:-1]):
            lo, hi = max(start - int(s0), 0), min(stop - int(s0), len(part))
            if lo < hi:
                pieces.append(part[(slice(lo, hi),) + rest])      # views: one copy below
                touched.append(part)
        if not pieces:
            return np.array(self.parts[0][(slice(0, 0),) + rest])
        out = np.array(pieces[0]) if len(pieces) == 1 else np.concatenate(pieces)
        for part in touched:                                        # copied: the read pages go
            release_pages(part)
        return out


@dataclass
class Split:
    """One split of several datasets. X: (n, L, d) RowStack over their caches; y (n,) int64;
    groups (n,) index of each row's dataset in the list given to `load_split`; ids (n,) str."""

    X: RowStack
    y: np.ndarray
    groups: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def load_split(folders: Mapping, datasets: Sequence[str], split: str, pooling_type: str) -> Split:
    """Stack one split of `datasets` from the cache without copying the features.

    folders: {(dataset, split, pooling_type): cache folder} (what `ensure_features` returns)."""
    sets, groups = [], []
    for gi, name in enumerate(datasets):
        key = (name, split, pooling_type)
        if key in folders:
            sets.append(load_features(os.fspath(folders[key])))
            groups.append(np.full(len(sets[-1]), gi, dtype=np.int64))
    if not sets:
        raise SirenError(f"no {split} rows for {list(datasets)}: check DATASETS and the data dir")
    return Split(X=RowStack([fs.X for fs in sets]), y=np.concatenate([fs.y for fs in sets]),
                 groups=np.concatenate(groups), ids=np.concatenate([fs.ids for fs in sets]))
