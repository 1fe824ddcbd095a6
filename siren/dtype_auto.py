"""`dtype auto` on a CPU, decided by measurement: a short timed probe on first use, cached per machine.

Why not CPU flags alone: on an AVX512-BF16 host without AMX, bf16 ran slower than fp32 (a plain
forward of smollm2-135m at 8 x 256 tokens: 460-570 against 680-720 tok/s), yet the flags said
"native bf16". So where the CPU has bf16 instructions, `decide` times both dtypes (the caller's
`measure`: a few forwards of the loaded backbone, or a few steps of a head-sized layer) and keeps
the faster; bf16 must win by `MARGIN`, since it also costs precision. The answer is cached in
`<cache dir>/dtype_auto.json`, keyed by CPU model, torch version, what was measured (the
backbone) and device, so later runs are deterministic and pay nothing; delete the file (or the
key) to measure again. Without bf16 instructions bf16 is emulated (about 17x slower on an
AVX2-only CPU): callers pick fp32 without probing. An explicit dtype never reaches this module.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Callable

import torch

from siren.fileio import atomic_write_json
from siren.log import log

__all__ = ["CACHE_NAME", "MARGIN", "cpu_model", "cache_key", "decide"]

CACHE_NAME = "dtype_auto.json"
MARGIN = 1.05   # bf16 is chosen only when at least 5% faster than fp32

_said: set[str] = set()


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`), else what the platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cache_key(what: str, device: str) -> str:
    return f"{cpu_model()} | torch {torch.__version__} | {what} | {device}"


def _read(path: Path) -> dict:
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}    # missing or damaged: measure again (and rewrite it)
    return cached if isinstance(cached, dict) else {}


def decide(what: str, device: str, measure: Callable[[], dict], cache_dir: Path) -> str:
    """"bfloat16" or "float32" for `what` on `device`: the cached answer, else `measure()`'s
    ({"bfloat16": speed, "float32": speed, "unit": "tok/s"}, higher is faster), then cached."""
    path = Path(cache_dir) / CACHE_NAME
    key = cache_key(what, device)
    rec = _read(path).get(key)
    if not (isinstance(rec, dict) and rec.get("dtype") in ("bfloat16", "float32")):
        speeds = measure()
        choice = "bfloat16" if speeds["bfloat16"] >= MARGIN * speeds["float32"] else "float32"
        rec = {"dtype": choice, "bfloat16": round(float(speeds["bfloat16"]), 1),
               "float32": round(float(speeds["float32"]), 1), "unit": speeds.get("unit", "per s")}
        cached = _read(path)   # read again: another process may have added its own key meanwhile
        cached[key] = rec
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, cached)
        _said.discard(key)
    if key not in _said:
        _said.add(key)
        log(f"dtype auto ({what}): bf16 {rec['bfloat16']:g} {rec['unit']}, fp32 {rec['float32']:g} {rec['unit']} "
            f"-> {rec['dtype']} (cached in {path})")
    return rec["dtype"]
