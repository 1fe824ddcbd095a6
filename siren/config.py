"""Defaults in one place (`configs/defaults.yaml`); CLI flags and shell variables override them.

The resolved config is written next to every result (`results.json`, `eval_results.json`).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from siren.backbones import REPO_ROOT

DEFAULTS_PATH = REPO_ROOT / "configs" / "defaults.yaml"
OUTPUT_ROOT = REPO_ROOT / "train" / "probes" / "optuna"


def defaults() -> dict:
    with open(DEFAULTS_PATH) as f:
        return yaml.safe_load(f)


def resolve(args, keys) -> dict:
    """Defaults overridden by every non-None attribute of `args` named in `keys`."""
    cfg = defaults()
    for key in keys:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    return {k: cfg.get(k) for k in keys}


def model_slug(model: str) -> str:
    """A folder-safe name for a backbone: registry name as is, Hub id 'org/name' -> 'org--name',
    a local folder -> its folder name."""
    path = Path(model)
    if model.startswith((".", "/", "~")) or path.is_dir():
        return path.expanduser().resolve().name
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model)


def output_dir(model: str) -> Path:
    """The paper's output folder: train/probes/optuna/{MODEL}_general/."""
    return OUTPUT_ROOT / f"{model_slug(model)}_general"
