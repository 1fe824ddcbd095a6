"""The feature cache: round trip, manifest reuse / re-extraction, damage detection, crash resume, torchrun sharding."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import siren.backbones
from siren.backbones import load_backbone
from siren.data import load_splits
from siren.errors import SirenError
from siren.fileio import file_lock
from siren.pipeline.cache import (FEATURES, IDS, LABELS, MANIFEST, RowStack, cache_path, load_features, load_split,
                                  stale_reason)
from siren.pipeline.extract import ensure_features, extract_texts
from siren.features import LayerFeatures, length_batches
from tiny_models import load_base

REPO = Path(__file__).resolve().parent.parent
WORDS = "how do I bake bread at home tell me a joke about cats hurt someone badly write a poem the sea".split()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def _write_data(root: Path, n_train: int = 24, n_test: int = 8, n_eval: int = 5, seed: int = 0) -> Path:
    """A SIREN-ready JSONL data dir: toxic_chat (train + test) and advbench (eval-only, test)."""
    def rows(prefix, texts, labels):
        return [{"id": f"{prefix}-{i}", "text": t, "label": int(y), "prompt": t, "response": None}
                for i, (t, y) in enumerate(zip(texts, labels))]

    files = {
        "toxic_chat/train.jsonl": rows("tc-train", _texts(n_train, seed), [i % 2 for i in range(n_train)]),
        "toxic_chat/test.jsonl": rows("tc-test", _texts(n_test, seed + 1), [i % 2 for i in range(n_test)]),
        "advbench/test.jsonl": rows("adv", _texts(n_eval, seed + 2), [1] * n_eval),
    }
    for rel, items in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return root


def _ensure(*args, **kwargs) -> dict:
    """ensure_features as {(dataset, split, pooling type): folder}."""
    return {key: entry.folder for key, entry in ensure_features(*args, **kwargs).items()}


class _Counter:
    """Counts forwards of a backbone's model."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(lambda *a: setattr(self, "calls", self.calls + 1))


def _same_cache(a: Path, b: Path) -> None:
    for name in (FEATURES, LABELS, IDS):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = json.loads((a / MANIFEST).read_text()), json.loads((b / MANIFEST).read_text())
    for k in ("seconds", "created", "world_size"):
        ma.pop(k), mb.pop(k)
    assert ma == mb


def _run_ensure_subprocess(kwargs: dict, env_extra: dict | None = None, torchrun: int = 0) -> subprocess.CompletedProcess:
    code = ("import json, sys\nfrom siren.pipeline.extract import ensure_features\n"
            "kw = json.loads(sys.argv[1])\nensure_features(kw.pop('model'), kw.pop('datasets'), **kw)\n")
    # This checkout's package first, also for torchrun's workers (they run a script outside the repo).
    env = {**os.environ, **(env_extra or {}), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if torchrun:
        script = Path(kwargs["cache_dir"]).parent / "run_ensure.py"
        script.write_text(code)
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={torchrun}",
               str(script), json.dumps(kwargs)]
    else:
        cmd = [sys.executable, "-c", code, json.dumps(kwargs)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


# --------------------------------------------------------------------------- unit-level


def test_cache_path_is_safe_and_distinct(tmp_path):
    p = cache_path(tmp_path, "Qwen/Qwen3-0.6B", "toxic_chat", "train", "residual_mean")
    assert p.relative_to(tmp_path).parts == ("Qwen--Qwen3-0.6B", "toxic_chat", "train", "residual_mean")
    a = cache_path(tmp_path, "/x/models/tiny", "d", "test", "mlp_mean")
    b = cache_path(tmp_path, "/y/models/tiny", "d", "test", "mlp_mean")
    assert a != b and a.parent.parent.parent.parent == tmp_path


@pytest.mark.parametrize("cache_dtype", ["float16", "float32"])
def test_round_trip_equals_layer_features_in_input_order(tiny_llama_dir, tmp_path, cache_dtype):
    model, tok = load_base(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)
    lf = LayerFeatures(model, tok, pooling_types=("residual_mean", "mlp_mean"), max_length=64)
    texts = _texts(12) + ["", "<|im_start|>user hi<|im_end|>"]
    ids = [f"row-{i}" for i in range(len(texts))]
    labels = [i % 2 for i in range(len(texts))]
    out = {rep: tmp_path / rep for rep in lf.pooling_types}
    extract_texts(lf, texts, out, manifest={"backbone": "tiny", "dataset": "d", "split": "train"},
                  labels=labels, ids=ids, batch_tokens=96, cache_dtype=cache_dtype)
    assert len(length_batches([len(x) for x in lf.tokenize(texts)], 96)) > 3  # really batched
    want = lf.encode(texts, batch_tokens=96)  # same batches -> same float32 values
    for rep, folder in out.items():
        fs = load_features(folder)
        assert isinstance(fs.X, np.memmap) and fs.X.dtype == np.dtype(cache_dtype)
        assert fs.X.shape == (len(texts), 4, 32)
        np.testing.assert_array_equal(np.asarray(fs.X), want[rep].astype(cache_dtype))
        assert fs.y.dtype == np.int64 and fs.y.tolist() == labels
        assert fs.ids.tolist() == ids
        m = fs.manifest
        assert (m["pooling_type"], m["n"], m["cache_dtype"], m["max_length"], m["dtype"]) == (
            rep, len(texts), cache_dtype, 64, "float32")
        assert m["layers"] == [0, 1, 2, 3] and m["dataset"] == "d" and "normalization_version" in m
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(
            [FEATURES, LABELS, IDS, MANIFEST])
    # Row i is text i: equal to encoding that text alone (up to fp32 round-off and cache rounding).
    alone = lf([lf.tokenize([texts[5]])[0]])["residual_mean"][0].numpy()
    np.testing.assert_allclose(np.asarray(load_features(out["residual_mean"]).X[5], dtype=np.float32), alone,
                               rtol=2e-3, atol=2e-3)


def test_unfinished_folder_is_never_loaded(tmp_path):
    (tmp_path / FEATURES).write_bytes(b"")
    with pytest.raises(SirenError, match="no finished feature cache"):
        load_features(tmp_path)


def test_bad_cache_dtype(tiny_llama_dir, tmp_path):
    model, tok = load_base(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)
    with pytest.raises(SirenError, match="cache dtype"):
        extract_texts(LayerFeatures(model, tok), ["a"], tmp_path, manifest={}, labels=[0], ids=["a"],
                      cache_dtype="int8")


# --------------------------------------------------------------------------- ensure_features


def test_ensure_features_reuses_and_reextracts(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    data = _write_data(tmp_path / "data")
    cache = tmp_path / "cache"
    bb = load_backbone(str(tiny_llama_dir), device="cpu", dtype="float32")
    counter = _Counter(bb.model)
    kw = dict(data_dir=data, cache_dir=cache, batch_tokens=256, max_length=64, pooling_types=("residual_mean",))
    got = _ensure(str(tiny_llama_dir), ["toxic_chat", "advbench"], backbone=bb, **kw)
    # Eval-only advbench has only test; toxic_chat gets a carved validation split.
    assert set(got) == {("toxic_chat", s, "residual_mean") for s in ("train", "validation", "test")} | {
        ("advbench", "test", "residual_mean")}
    assert counter.calls > 0
    fs = load_features(got[("toxic_chat", "validation", "residual_mean")])
    assert fs.X.shape[1:] == (4, 32) and fs.manifest["split"] == "validation"
    assert fs.manifest["model_id"] == str(Path(tiny_llama_dir).resolve())
    mtimes = {k: (v / MANIFEST).stat().st_mtime_ns for k, v in got.items()}

    # Same manifest: reused, no forward, and no backbone load at all when none is passed.
    counter.calls = 0
    assert _ensure(str(tiny_llama_dir), ["toxic_chat", "advbench"], backbone=bb, **kw) == got
    assert counter.calls == 0
    monkeypatch.setattr(siren.backbones, "load_backbone", lambda *a, **k: pytest.fail("backbone loaded"))
    assert _ensure(str(tiny_llama_dir), ["toxic_chat", "advbench"], **kw) == got
    assert {k: (v / MANIFEST).stat().st_mtime_ns for k, v in got.items()} == mtimes
    monkeypatch.undo()

    # Different max_length: re-extracted (and the reason is logged).
    capsys.readouterr()
    _ensure(str(tiny_llama_dir), ["advbench"], backbone=bb, **{**kw, "max_length": 32})
    assert counter.calls > 0
    assert "max_length: 64 -> 32" in capsys.readouterr().err
    assert load_features(got[("advbench", "test", "residual_mean")]).manifest["max_length"] == 32

    # Different ids (the data changed): re-extracted.
    counter.calls = 0
    _write_data(tmp_path / "data", n_eval=6)
    _ensure(str(tiny_llama_dir), ["advbench"], backbone=bb, **{**kw, "max_length": 32})
    assert counter.calls > 0 and len(load_features(got[("advbench", "test", "residual_mean")])) == 6

    # A stored manifest for another pooling type (tampered) is stale too; a new pooling type gets its own folder.
    folder = got[("toxic_chat", "test", "residual_mean")]
    m = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**m, "pooling_type": "mlp_mean"}))
    counter.calls = 0
    both = _ensure(str(tiny_llama_dir), ["toxic_chat"], splits=("test",), backbone=bb,
                   **{**kw, "pooling_types": ("residual_mean", "mlp_mean")})
    assert counter.calls > 0 and load_features(folder).manifest["pooling_type"] == "residual_mean"
    assert both[("toxic_chat", "test", "mlp_mean")] == cache_path(cache, str(tiny_llama_dir), "toxic_chat", "test",
                                                                 "mlp_mean")
    # Different cache dtype: re-extracted as float32.
    _ensure(str(tiny_llama_dir), ["toxic_chat"], splits=("test",), backbone=bb, cache_dtype="float32", **kw)
    assert load_features(folder).X.dtype == np.float32

    # The CLI reports the (now cached) folders.
    from siren.cli import main

    capsys.readouterr()
    assert main(["extract", "--model", str(tiny_llama_dir), "--datasets", "toxic_chat", "--data_dir", str(data),
                 "--cache_dir", str(cache), "--max_length", "64", "--splits", "test", "--pooling_types", "mlp_mean"]) == 0
    out = capsys.readouterr().out
    assert "toxic_chat" in out and "cached" in out and "8x4x32" in out


# --------------------------------------------------------------------------- crash resume, sharding


def test_resume_after_sigkill_is_byte_identical(tiny_llama_dir, tmp_path):
    data = _write_data(tmp_path / "data", n_train=30)
    kw = dict(model=str(tiny_llama_dir), datasets=["toxic_chat"], splits=["train"], data_dir=str(data),
              cache_dir=str(tmp_path / "crash"), batch_tokens=64, max_length=48, pooling_types=["residual_mean"])
    # Die (SIGKILL) right after writing the 3rd batch, before its checkpoint.
    proc = _run_ensure_subprocess(kw, {"SIREN_EXTRACT_KILL_AFTER_BATCHES": "3", "SIREN_EXTRACT_CHECKPOINT_S": "0"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    folder = cache_path(tmp_path / "crash", str(tiny_llama_dir), "toxic_chat", "train", "residual_mean")
    assert not (folder / MANIFEST).exists() and not (folder / FEATURES).exists()
    with pytest.raises(SirenError):
        load_features(folder)

    bb = load_backbone(str(tiny_llama_dir), device="cpu", dtype="float32")
    counter = _Counter(bb.model)
    call = {k: v for k, v in kw.items() if k not in ("model", "datasets")}
    got = _ensure(str(tiny_llama_dir), ["toxic_chat"], backbone=bb, **call)
    texts = load_splits("toxic_chat", data_dir=data)["train"]["text"].tolist()
    n_batches = len(length_batches([len(x) for x in LayerFeatures(bb.model, bb.tokenizer, max_length=48).tokenize(texts)], 64))
    assert n_batches > 4
    assert counter.calls == n_batches - 2  # batches 1-2 were checkpointed; batch 3 is redone

    clean = _ensure(str(tiny_llama_dir), ["toxic_chat"], backbone=bb,
                            **{**call, "cache_dir": str(tmp_path / "clean")})
    key = ("toxic_chat", "train", "residual_mean")
    _same_cache(got[key], clean[key])
    assert not list(got[key].glob("progress*")) and not list(got[key].glob("*.partial*"))


def test_torchrun_two_processes_equal_one(tiny_llama_dir, tmp_path):
    data = _write_data(tmp_path / "data", n_train=20)
    kw = dict(model=str(tiny_llama_dir), datasets=["toxic_chat", "advbench"], data_dir=str(data),
              cache_dir=str(tmp_path / "sharded"), batch_tokens=64, max_length=48,
              pooling_types=["residual_mean", "mlp_mean"])
    proc = _run_ensure_subprocess(kw, {"OMP_NUM_THREADS": "1"}, torchrun=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    call = {k: v for k, v in kw.items() if k not in ("model", "datasets")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker: the same kernels, so the same bits
    try:
        single = _ensure(str(tiny_llama_dir), ["toxic_chat", "advbench"],
                                 **{**call, "cache_dir": str(tmp_path / "single")})
    finally:
        torch.set_num_threads(threads)
    assert len(single) == 8
    for key, folder in single.items():
        sharded = cache_path(tmp_path / "sharded", str(tiny_llama_dir), *key)
        _same_cache(sharded, folder)
        assert json.loads((sharded / MANIFEST).read_text())["world_size"] == 2
        assert sorted(p.name for p in sharded.iterdir() if not p.name.startswith(".")) == sorted(
            [FEATURES, LABELS, IDS, MANIFEST])


# --------------------------------------------------------------------------- damaged caches


def _one_cache(tiny_llama_dir, tmp_path, cache_name: str):
    data = _write_data(tmp_path / "data")
    bb = load_backbone(str(tiny_llama_dir), device="cpu", dtype="float32")
    kw = dict(splits=("train",), data_dir=data, cache_dir=tmp_path / cache_name, batch_tokens=128, max_length=48,
              pooling_types=("residual_mean",))
    return bb, kw, _ensure(str(tiny_llama_dir), ["toxic_chat"], backbone=bb, **kw)[("toxic_chat", "train", "residual_mean")]


def test_truncated_features_are_reextracted_byte_identical(tiny_llama_dir, tmp_path):
    bb, kw, folder = _one_cache(tiny_llama_dir, tmp_path, "cache")
    clean = _ensure(str(tiny_llama_dir), ["toxic_chat"], backbone=bb,
                    **{**kw, "cache_dir": tmp_path / "clean"})[("toxic_chat", "train", "residual_mean")]
    size = (folder / FEATURES).stat().st_size
    with open(folder / FEATURES, "r+b") as f:
        f.truncate(size - 100)
    assert "truncated" in stale_reason(folder, {})
    with pytest.raises(SirenError, match="truncated"):
        load_features(folder)
    entries = ensure_features(str(tiny_llama_dir), ["toxic_chat"], backbone=bb, **kw)
    assert entries[("toxic_chat", "train", "residual_mean")].status == "extracted"
    _same_cache(folder, clean)
    assert (folder / FEATURES).stat().st_size == size


@pytest.mark.parametrize("damage, message", [
    (lambda f: np.save(f / LABELS, 1 - np.load(f / LABELS)), "labels.npy differs"),
    (lambda f: np.save(f / IDS, np.load(f / IDS)[::-1]), "ids.npy differs"),
    (lambda f: np.save(f / FEATURES, np.load(f / FEATURES)[:, :2]), "the manifest says"),
    (lambda f: np.save(f / FEATURES, np.load(f / FEATURES).astype(np.float32)), "the manifest says"),
])
def test_damaged_cache_is_refused_then_reextracted(tiny_llama_dir, tmp_path, damage, message):
    bb, kw, folder = _one_cache(tiny_llama_dir, tmp_path, "cache")
    before = {n: (folder / n).read_bytes() for n in (FEATURES, LABELS, IDS)}
    damage(folder)
    with pytest.raises(SirenError, match=message):
        load_features(folder)
    entries = ensure_features(str(tiny_llama_dir), ["toxic_chat"], backbone=bb, **kw)
    assert entries[("toxic_chat", "train", "residual_mean")].status == "extracted"
    assert {n: (folder / n).read_bytes() for n in (FEATURES, LABELS, IDS)} == before


def test_second_writer_of_a_folder_is_refused(tiny_llama_dir, tmp_path):
    model, tok = load_base(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)
    folder = tmp_path / "f"
    with file_lock(folder / ".lock", wait=False):
        with pytest.raises(SirenError, match="another process is writing"):
            extract_texts(LayerFeatures(model, tok), ["a b"], folder, manifest={}, labels=[0], ids=["a"])
    assert not (folder / MANIFEST).exists()


def test_row_stack_equals_concatenation(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 3, 4)).astype(np.float16) for n in (5, 0, 7, 2)]
    for i, p in enumerate(parts):
        np.save(tmp_path / f"{i}.npy", p)
    maps = [np.load(tmp_path / f"{i}.npy", mmap_mode="r") for i in range(len(parts))]
    full = np.concatenate(parts)
    X = RowStack(maps)
    assert X.shape == full.shape == (14, 3, 4)
    for key in [np.s_[:], np.s_[3:9], np.s_[6:7, 1], np.s_[:, 1:3], np.s_[12:40], np.s_[9:9]]:
        np.testing.assert_array_equal(X[key], full[key])
    with pytest.raises(TypeError):
        np.asarray(X)


def _mapped_rss_kib(path) -> int:
    """This process's resident KiB of mappings of the file `path` (from /proc/self/smaps)."""
    total, current = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:          # a mapping's first line
                current = head[5] if len(head) > 5 else None
            elif head and head[0] == "Rss:" and current == str(path):
                total += int(head[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_row_stack_reads_leave_no_cache_pages_resident(tmp_path):
    """A cache read chunk by chunk must not stay resident as a whole: RowStack (and aggregate on a
    bare memmap) release the pages they read; a plain memmap read keeps them (the control)."""
    from siren.pipeline.select import aggregate

    path = tmp_path / "f.npy"
    X = np.random.default_rng(0).standard_normal((2048, 8, 1024)).astype(np.float16)     # 32 MiB
    np.save(path, X)
    control = np.load(path, mmap_mode="r")
    assert float(np.asarray(control[:], dtype=np.float32).sum()) == pytest.approx(float(X.astype(np.float32).sum()))
    assert _mapped_rss_kib(path) > 30 * 1024          # the control: every page read stays mapped in
    del control
    stack = RowStack([np.load(path, mmap_mode="r")])
    for s in range(0, 2048, 256):
        np.testing.assert_array_equal(stack[s:s + 256], X[s:s + 256])
    np.testing.assert_array_equal(stack[:, 2:5], X[:, 2:5])
    assert _mapped_rss_kib(path) < 1024
    bare = np.load(path, mmap_mode="r")
    sel = {1: np.array([3, 7]), 6: np.array([0])}
    Z = aggregate(bare, sel, np.ones(8), chunk_rows=300)
    np.testing.assert_array_equal(Z, np.concatenate([X[:, 1][:, [3, 7]], X[:, 6][:, [0]]], axis=1).astype(np.float32))
    assert _mapped_rss_kib(path) < 1024


def test_load_split_stacks_datasets_in_order(tiny_llama_dir, tmp_path):
    data = _write_data(tmp_path / "data")
    folders = ensure_features(str(tiny_llama_dir), ["toxic_chat", "advbench"], splits=("test",), data_dir=data,
                              cache_dir=tmp_path / "c", batch_tokens=128, max_length=48, device="cpu",
                              pooling_types=("residual_mean",))
    split = load_split(folders, ["advbench", "toxic_chat"], "test", "residual_mean")
    parts = [load_features(folders[(d, "test", "residual_mean")]) for d in ("advbench", "toxic_chat")]
    np.testing.assert_array_equal(split.X[:], np.concatenate([p.X for p in parts]))
    np.testing.assert_array_equal(split.y, np.concatenate([p.y for p in parts]))
    np.testing.assert_array_equal(split.groups, [0] * len(parts[0]) + [1] * len(parts[1]))
    assert list(split.ids) == list(parts[0].ids) + list(parts[1].ids)


def test_manifest_written_before_the_pooling_type_rename_is_still_valid(tiny_llama_dir, tmp_path):
    bb, kw, folder = _one_cache(tiny_llama_dir, tmp_path, "cache")
    m = json.loads((folder / MANIFEST).read_text())
    m["rep_type"] = m.pop("pooling_type")
    (folder / MANIFEST).write_text(json.dumps(m))
    entries = ensure_features(str(tiny_llama_dir), ["toxic_chat"], backbone=bb, **kw)
    assert entries[("toxic_chat", "train", "residual_mean")].status == "cached"
