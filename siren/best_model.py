"""The paper's `best_model.pkl`, written and read as DATA ONLY: dicts, lists, tuples, str, int,
float, bool, None and numpy arrays/scalars. Loading uses a restricted unpickler that resolves only
the numpy callables arrays need, so a crafted pickle cannot run code. No siren imports but errors.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from siren.errors import SirenError
from siren.fileio import atomic_write_with

__all__ = ["save_best_model_pkl", "load_best_model_pkl", "MAX_PICKLE_DEPTH"]



_NUMPY_CALLABLES = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # Protocol-2 pickles (what numpy arrays get under Python 2 rules) encode raw bytes this way.
    ("_codecs", "encode"),
}


def _allowed_global(module: str, name: str):
    if (module, name) in _NUMPY_CALLABLES:
        if module == "_codecs":
            import codecs

            return codecs.encode
        mod = module.replace("numpy.core.", "numpy._core.") if module.startswith("numpy.core.") else module
        import importlib

        return getattr(importlib.import_module(mod), name)
    if module == "numpy" or module == "numpy.dtypes":
        obj = getattr(np if module == "numpy" else np.dtypes, name, None)
        if isinstance(obj, type) and obj is not np.object_ and (issubclass(obj, np.generic) or issubclass(obj, np.dtype)):
            return obj  # numpy scalar types and dtype classes
    return None


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module, name):
        obj = _allowed_global(module, name)
        if obj is None:
            raise SirenError(f"{self._source}: refusing to load {module}.{name}: best_model.pkl may hold only "
                             "plain data and numpy arrays (a pickle naming other callables can run code)")
        return obj

    def persistent_load(self, pid):
        raise SirenError(f"{self._source}: refusing a persistent id in a data-only pickle")


MAX_PICKLE_DEPTH = 64  # best_model.pkl is a few levels deep; anything deeper is not ours


def _check_data(value: Any, where: str) -> None:
    """Plain data only, walked without recursion (a crafted file nested 200k deep must give this
    error, not a RecursionError), at most MAX_PICKLE_DEPTH containers deep."""
    root = where
    stack = [(value, where, 0)]
    while stack:
        value, where, depth = stack.pop()
        if value is None or isinstance(value, (str, bytes, bool, int, float, np.generic)):
            if isinstance(value, np.generic) and value.dtype.hasobject:
                raise SirenError(f"{where}: object-typed numpy values are not data")
            continue
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise SirenError(f"{where}: numpy arrays of dtype object are not allowed (data only)")
            continue
        if isinstance(value, (dict, list, tuple)) and depth >= MAX_PICKLE_DEPTH:
            raise SirenError(f"{root}: nested more than {MAX_PICKLE_DEPTH} levels deep; "
                             "best_model.pkl holds a flat record: the file is corrupt or not ours")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, (str, int, float, bool, tuple)) and k is not None:
                    raise SirenError(f"{where}: dict key {k!r} ({type(k).__name__}) is not plain data")
                stack.append((v, f"{where}[{k!r}]", depth + 1))
            continue
        if isinstance(value, (list, tuple)):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
            continue
        raise SirenError(f"{where}: {type(value).__module__}.{type(value).__name__} is not plain data "
                         "(allowed: dict, list, tuple, str, int, float, bool, None, numpy arrays)")


def save_best_model_pkl(path, payload: dict) -> None:
    """Write the paper's `best_model.pkl` holding data only (see `load_best_model_pkl`)."""
    if not isinstance(payload, dict):
        raise SirenError(f"best_model.pkl payload must be a dict, got {type(payload).__name__}")
    _check_data(payload, "best_model.pkl payload")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Protocol 5 streams each array's buffer into the file (protocol 4 copies it to bytes first).

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(payload, f, protocol=5)

    atomic_write_with(path, write)


def load_best_model_pkl(path) -> dict:
    """Read a data-only `best_model.pkl`; anything but plain data + numpy is refused, never run."""
    path = Path(path)
    if not path.is_file():
        raise SirenError(f"{path} is missing")
    data = path.read_bytes()
    try:
        payload = _DataOnlyUnpickler(io.BytesIO(data), str(path)).load()
    except SirenError:
        raise
    except Exception as err:  # truncated or garbage bytes raise many kinds of errors
        raise SirenError(f"{path} could not be unpickled ({type(err).__name__}: {err}): the file is corrupt") from err
    if not isinstance(payload, dict):
        raise SirenError(f"{path}: expected a dict, got {type(payload).__name__}")
    _check_data(payload, str(path))
    return payload
