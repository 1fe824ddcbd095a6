"""File primitives shared by every stage: all-or-nothing writes and inter-process locks.

Every file the project writes goes through `atomic_write` (or one of its typed forms): the
bytes go to a temp file in the same folder, are fsynced, then renamed over the target, so a
reader sees the old file or the new one, never half of one, whatever kills the writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from siren.errors import SirenError

__all__ = ["atomic_write", "atomic_write_with", "atomic_write_text", "atomic_write_json", "atomic_save_npy",
           "fsync_dir", "file_lock", "staging_dir", "save_figure", "jsonable"]


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` all-or-nothing (temp file in the same folder, fsync, rename)."""
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data), mode)


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None], mode: int = 0o644) -> None:
    """Like `atomic_write`, for a file that `write(tmp_path)` writes itself at a temp path beside
    `path` (so a big pickle or tensor file is streamed, never held in memory as one bytes object)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        _raise_if_disk_full(err, path)
        raise
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _raise_if_disk_full(err, path)
        raise


def _raise_if_disk_full(err: BaseException, path: Path) -> None:
    """A full disk is the user's to fix: one line naming the file, not the writer's traceback
    (safetensors raises its own SafetensorError carrying only the OS message)."""
    from siren.errors import is_disk_full

    if isinstance(err, Exception) and is_disk_full(err):
        raise SirenError(f"no space left on device while writing {path}: free some space and run again "
                         f"(the file was not replaced; files written before are intact)") from None


def jsonable(value: Any) -> Any:
    """numpy arrays and scalars, dataclasses, Paths and tuples -> plain JSON values; a value of any
    other type is a SirenError (a bug to surface, not a repr to write)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Path):
        return str(value)
    raise SirenError(f"value {value!r} ({type(value).__name__}) cannot be written to JSON")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """JSON with `allow_nan=False`: a NaN or inf is a bug to surface, not invalid JSON to write."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write(path, buf.getvalue())


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """A matplotlib figure as PNG, all-or-nothing (rendered in memory, then `atomic_write`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write(path, buf.getvalue())



def save_roc_figure(fig, ax, title: str, path: str | os.PathLike) -> None:
    """Finish ROC axes whose curves are drawn (chance line, labels, legend) and save them atomically."""
    import matplotlib.pyplot as plt

    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)

def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` durable (best effort: some file systems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True, what: str | None = None) -> Iterator[None]:
    """An exclusive inter-process lock on `path` (created if missing).

    wait=True blocks until the lock is free (e.g. ranks converting one backbone once);
    wait=False refuses at once with a SirenError naming `what` (e.g. two extractions
    writing the same cache folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise SirenError(f"another process is writing {what or path.parent}; "
                             "wait for it to finish or stop it") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _owner_gone(folder: Path) -> bool:
    """True if no live process holds `folder` (its creator died: kill -9, power loss)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike, on_stale: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A fresh folder `.<name>.XXXX.partial` beside `out_dir` to build a result in, held (an
    flock on the folder) until the context exits; the caller moves or deletes its content.

    A killed run leaves its folder behind: the next call removes every such folder whose owner
    is gone (calling `on_stale(path)` to name it), and leaves those of live runs alone (workers
    of one shared study stage beside each other). Creation and cleaning share one lock, so a
    folder is never seen unowned between its creation and its flock."""
    out_dir = Path(out_dir)
    parent = out_dir.parent
    guard = os.open(parent, os.O_RDONLY)    # the parent folder itself is the lock: no lock file left behind
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        for old in sorted(parent.glob(f".{glob.escape(out_dir.name)}.*.partial")):
            if old.is_dir() and not old.is_symlink() and _owner_gone(old):
                shutil.rmtree(old, ignore_errors=True)
                if on_stale is not None:
                    on_stale(old)
        work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=parent))
        fd = os.open(work, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(guard)
    try:
        yield work
    finally:
        os.close(fd)    # releases the flock


def load_yaml(stream, source: str):
    """YAML through a SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the
    last value silently, so a setting edited in one place and left in another would be ignored)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise SirenError(f"{source}: key {key!r} is given twice in one mapping (lines {seen[key]} "
                                         f"and {line}): keep one")
                    seen[key] = line
                except TypeError:   # an unhashable key: the base class names it
                    continue
            return super().construct_mapping(node, deep=deep)

    return yaml.load(stream, Loader=UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
