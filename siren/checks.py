"""Start-up checks: every user-given value is validated before any data is read or a backbone loads.

Each check takes plain values (not argparse namespaces), raises `SirenError` naming the value,
what it must be and how to fix it, and returns the (normalised) value. Entry points call them
at the top of `run(args)`, so a bad flag costs a second, not minutes of extraction followed by
a traceback. The checks import nothing heavy (torch only to see whether a CUDA device exists).
"""

from __future__ import annotations

import math
import numbers
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from siren.errors import SirenError

__all__ = [
    "check_c_values", "check_selection_thresholds", "check_decision_threshold", "check_n_trials",
    "check_n_folds", "check_n_folds_fit", "check_storage", "check_max_length", "check_device",
    "check_dtype", "check_positive_int", "check_out_dir", "check_writable_dir", "check_training_values",
]

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def _number(value, name: str) -> float:
    """`value` as a float; SirenError for anything that is not a real number (bools included)."""
    if isinstance(value, bool):
        raise SirenError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SirenError(f"{name} must be a number, got {value!r}") from None


def _integer(value, name: str) -> int:
    """`value` as an int; SirenError for bools, fractions and non-numbers (numpy integers pass)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise SirenError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _values(values, name: str) -> list:
    if values is None or isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        values = [values]
    values = list(values)
    if not values:
        raise SirenError(f"{name} is empty: give at least one value")
    return values


# ------------------------------------------------------------------ training hyperparameters

def check_c_values(values, name: str = "C_VALUES (--c_values)") -> list[float]:
    """Probe C grid: each finite and > 0 (the penalty is ||w||_1 / C; C <= 0 turns it into a reward
    or divides by zero)."""
    out = []
    for v in _values(values, name):
        c = _number(v, name)
        if not math.isfinite(c) or c <= 0:
            raise SirenError(f"{name}: C = {v!r} is not allowed; every C must be a finite number > 0 "
                             "(the probe's penalty is ||w||_1 / C), e.g. 200 500 1000")
        out.append(c)
    return out


def check_probe_tol(value, name: str = "PROBE_TOL (--probe_tol)") -> float:
    """The probes' stopping tolerance: finite, in (0, 1) (a step no larger than this share of the
    weights ends a layer's solve; 1 or more would stop every layer after its first step)."""
    t = _number(value, name)
    if not (math.isfinite(t) and 0 < t < 1):
        raise SirenError(f"{name}: {value!r} must be a number in (0, 1), e.g. 1e-4 (the default) or 1e-6 "
                         "(the probes then reach their optimum)")
    return t


def check_probe_c_rule(value, name: str = "PROBE_C_RULE (--probe_c_rule)") -> str:
    """How each layer's probe C is picked: one of siren.pipeline.probes.C_RULES."""
    from siren.pipeline.probes import C_RULES

    if value not in C_RULES:
        raise SirenError(f"{name}: {value!r} is not a rule: use one of {', '.join(C_RULES)} (one_se, the default: "
                         "the sparsest C within one standard error of the best validation F1; best: the best one)")
    return value


def check_selection_thresholds(values, name: str = "SELECTION_THRESHOLDS (--selection_thresholds)") -> list[float]:
    """Neuron selection shares: each in (0, 1] (the share of a layer's total |w| to keep)."""
    out = []
    for v in _values(values, name):
        t = _number(v, name)
        if not (math.isfinite(t) and 0 < t <= 1):
            raise SirenError(f"{name}: selection threshold {v!r} must be in (0, 1] (the share of a layer's "
                             "total |w| kept), e.g. 0.9")
        out.append(t)
    return out


def check_decision_threshold(value, name: str = "--decision_threshold") -> float:
    """A score cut-off: a finite number in [0, 1] (harmful iff score >= threshold)."""
    t = _number(value, name)
    if not (math.isfinite(t) and 0 <= t <= 1):
        raise SirenError(f"{name} {value!r} must be a number in [0, 1] (a text is harmful when its score "
                         ">= the threshold), e.g. 0.5")
    return t


def check_positive_int(value, name: str, *, minimum: int = 1, hint: str = "") -> int:
    """An integer >= minimum."""
    n = _integer(value, name)
    if n < minimum:
        raise SirenError(f"{name} is {value!r}: it must be an integer >= {minimum}{hint}")
    return n


def check_n_trials(value, name: str = "N_TRIALS (--n_trials)") -> int:
    return check_positive_int(value, name, hint=" (Optuna trials), e.g. 32")


def check_n_folds(value, name: str = "N_FOLDS (--n_folds)") -> int:
    return check_positive_int(value, name, minimum=2, hint=" (k-fold cross-validation needs two folds), e.g. 5")


def check_n_folds_fit(n_folds: int, counts: Mapping[str, int], name: str = "N_FOLDS (--n_folds)") -> None:
    """Each cross-validation stratum must hold at least n_folds rows.

    counts: {stratum description (e.g. "dataset 'aegis' (harmful)"): rows in train + validation}; strata
    with 0 rows are absent (the folds stratify on the strata present)."""
    n_folds = check_n_folds(n_folds, name)
    present = {k: int(v) for k, v in counts.items() if int(v) > 0}
    if not present:
        raise SirenError("no training rows: check DATASETS and the data dir")
    smallest = min(present, key=present.get)
    if present[smallest] < n_folds:
        fix = (f"use N_FOLDS={present[smallest]} or fewer" if present[smallest] >= 2
               else "add rows of that class (or raise MAX_PER_SPLIT)")
        raise SirenError(f"{name} = {n_folds} is more than the smallest class allows: {smallest} has only "
                         f"{present[smallest]} row(s) in train + validation, and every fold needs one; {fix}")


def check_max_length(value, name: str = "--max_length") -> int:
    return check_positive_int(value, name, hint=" (tokens read per text), e.g. 512")


def check_dtype(value, name: str = "--dtype") -> str | None:
    if value in (None, "", "auto"):
        return value
    if value not in DTYPES:
        raise SirenError(f"{name} {value!r} is not a dtype: use auto, float32, bfloat16 or float16")
    return value


def check_device(value, name: str = "--device") -> str | None:
    """cpu, cuda, cuda:N, mps, or auto/None (cuda if available); CUDA must exist if asked for."""
    if value in (None, "", "auto"):
        return value
    text = str(value)
    if not _DEVICE.match(text):
        raise SirenError(f"{name} {value!r} is not a device: use auto, cpu, cuda, cuda:<index> (e.g. cuda:0) or mps")
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SirenError(f"{name} {value!r}: CUDA is not available on this machine; use --device cpu (or auto)")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise SirenError(f"{name} {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif text == "mps":
        import torch

        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SirenError(f"{name} 'mps': Apple MPS is not available on this machine; use --device cpu")
    return text


# ------------------------------------------------------------------ folders and storage

def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path, name: str) -> Path:
    """`path` is (or can become) a folder this process can write into.

    An existing folder is probed by creating and removing a temp file (this catches read-only
    mounts and permissions alike, also for root); a missing one needs its nearest existing
    ancestor to be a writable folder. Nothing is created."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise SirenError(f"{name} {path} is a file, not a folder: give a folder path (or move the file away)")
    base = path if path.is_dir() else _nearest_existing(path.parent)
    if not base.is_dir():
        raise SirenError(f"{name} {path} cannot be created: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".siren-write-check.", dir=base)
    except OSError as err:
        what = "" if base == path else f" (its nearest existing parent {base})"
        raise SirenError(f"{name} {path}{what} is not writable ({err.strerror}): choose a writable folder "
                         "or fix its permissions") from None
    os.close(fd)
    os.unlink(probe)
    return path


def check_out_dir(path, name: str = "--out_dir") -> Path:
    return check_writable_dir(path, name)


def check_storage(value, name: str = "--storage") -> str | None:
    """An Optuna storage: a `.db` (SQLite) / `.log` / `.journal` file path, or a database URL.

    Paths must be creatable (their folder writable, the path not a folder); URLs must parse and
    name an installed database driver. Remote databases are not contacted here."""
    if value in (None, ""):
        return None
    text = str(value)
    if "://" in text:
        try:
            from sqlalchemy.engine import make_url

            url = make_url(text)
        except Exception as err:  # noqa: BLE001 - sqlalchemy raises several kinds for a bad URL
            raise SirenError(f"{name} {text!r} is not a valid database URL ({err}); use e.g. "
                             "sqlite:///optuna.db, optuna.journal or postgresql://user@host/db") from None
        if url.get_backend_name() == "sqlite":
            if url.database in (None, "", ":memory:"):
                raise SirenError(f"{name} {text!r}: an in-memory SQLite database cannot be shared; "
                                 "use sqlite:///path/to/optuna.db")
            _check_storage_file(Path(url.database), name, text)
            return text
        try:
            url.get_dialect()
        except Exception as err:  # noqa: BLE001 - NoSuchModuleError, ImportError of the driver
            raise SirenError(f"{name} {text!r}: database driver not available ({err}); install it or use "
                             "a SQLite/journal file") from None
        return text
    if text.endswith((".db", ".log", ".journal")):
        _check_storage_file(Path(text), name, text)
        return text
    raise SirenError(f"{name} {text!r}: expected a .db (SQLite), .log or .journal file path, or a database URL "
                     "such as sqlite:///optuna.db or postgresql://user@host/db")


def _check_storage_file(path: Path, name: str, given: str) -> None:
    path = path.expanduser()
    if path.is_dir():
        raise SirenError(f"{name} {given!r} is a folder: give a file path such as {path / 'optuna.db'}")
    check_writable_dir(path.parent, f"{name} {given!r}: folder")


# ------------------------------------------------------------------ one call per entry point

def check_training_values(*, c_values, selection_thresholds, n_trials, n_folds, max_length, device, dtype,
                          storage, out_dir, cache_dir, probe_tol, probe_c_rule,
                          positive: Mapping[str, object] | None = None) -> None:
    """All of `siren train`'s start-up checks. positive: {flag name: value} of further integers
    that must be >= 1 (None values are skipped)."""
    check_c_values(c_values)
    check_probe_tol(probe_tol)
    check_probe_c_rule(probe_c_rule)
    check_selection_thresholds(selection_thresholds)
    check_n_trials(n_trials)
    check_n_folds(n_folds)
    check_max_length(max_length)
    check_device(device)
    check_dtype(dtype)
    check_storage(storage)
    for key, value in (positive or {}).items():
        if value is not None:
            check_positive_int(value, f"--{key}")
    check_out_dir(out_dir)
    check_writable_dir(cache_dir, "--cache_dir")
