import json
import multiprocessing as mp
import os

import numpy as np
import pytest

from siren.errors import SirenError
from siren.fileio import atomic_save_npy, atomic_write, atomic_write_json, file_lock


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"old")
    atomic_write(p, b"new")
    assert p.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["a.bin"]


def test_failed_write_keeps_old_file(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(p, {"a": float("nan")})   # NaN is refused, never written as invalid JSON
    assert json.loads(p.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_atomic_save_npy_roundtrip(tmp_path):
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    atomic_save_npy(tmp_path / "x.npy", a)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), a)


def _hold(path, ready, release):
    with file_lock(path):
        ready.set()
        release.wait(10)


def test_file_lock_refuses_second_writer(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(tmp_path / ".lock", ready, release))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(SirenError, match="another process is writing cache X"):
            with file_lock(tmp_path / ".lock", wait=False, what="cache X"):
                pass
    finally:
        release.set()
        proc.join(10)
    with file_lock(tmp_path / ".lock", wait=False):   # free again once the holder is gone
        pass


def test_save_figure_writes_a_png_and_no_temp(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siren.fileio import save_figure

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    save_figure(fig, tmp_path / "f.png", dpi=50)
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["f.png"]


def test_jsonable_converts_and_refuses():
    from dataclasses import dataclass
    from pathlib import Path

    from siren.fileio import jsonable

    @dataclass
    class P:
        token: int
        score: float

    got = jsonable({1: (np.float32(0.5), np.arange(2)), "p": P(3, 0.25), "path": Path("/a/b"), "n": None})
    assert got == {"1": [0.5, [0, 1]], "p": {"token": 3, "score": 0.25}, "path": "/a/b", "n": None}
    assert json.loads(json.dumps(got)) == got
    with pytest.raises(SirenError, match="cannot be written to JSON"):
        jsonable({"x": {1, 2}})
