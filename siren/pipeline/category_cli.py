"""`siren categories`: fit (or refit) the harm-category head of an already trained guard.

    siren categories --guard train/probes/optuna/smollm2-135m_general [--cache_dir DIR] [--data_dir DIR]

Reads the guard folder (its selection, and its `results.json` for the training datasets, split
settings and feature cache) and the cached features of the train and validation rows (only what
is missing is extracted, with the backbone loaded once). Writes `categories.safetensors` +
`categories.json` into the guard folder (siren.pipeline.categories: the same fit `siren train`
runs when `category_head: auto`), leaving every other file as it was, so the binary verdict and
`llm-siren`'s scores do not change.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from siren.errors import SirenError


def add_arguments(p) -> None:
    p.add_argument("--guard", required=True, help="guard folder (with the results.json of its training run)")
    p.add_argument("--data_dir", help="default: the training run's, else $SIREN_DATA_DIR")
    p.add_argument("--cache_dir", help="feature cache (default: the training run's)")
    p.add_argument("--device")


def _training_config(folder: Path) -> dict:
    path = folder / "results.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SirenError(f"{path} could not be read ({err}): `siren categories` needs the guard's training run "
                         "(its datasets, splits and cache); train with `siren train` instead") from None
    return cfg


def run(args) -> int:
    from siren import config as cfgmod
    from siren.artifact import load_guard_config, selection_from_config
    from siren.pipeline.cache import load_split
    from siren.pipeline.categories import fit_run_categories
    from siren.pipeline.extract import ensure_features
    from siren.pipeline.select import aggregate

    folder = Path(args.guard)
    config = load_guard_config(folder)
    cfg = _training_config(folder)
    datasets = list(cfg["datasets"])
    split_kw = dict(data_dir=args.data_dir or cfg.get("data_dir"), seed=cfg["seed"], val_ratio=cfg["val_ratio"],
                    max_per_split=cfg.get("max_per_split"))
    rep = config["siren_module"]["pooling_type"]
    paths = ensure_features(cfg["model"], datasets, splits=("train", "validation"), pooling_types=[rep],
                            cache_dir=args.cache_dir or cfg.get("cache_dir"), batch_tokens=cfg.get("batch_tokens"),
                            batch_size=cfg.get("batch_size"), dtype=cfg.get("dtype"), device=args.device or cfg.get("device"),
                            cache_dtype=cfg.get("cache_dtype") or cfgmod.default("cache_dtype"), max_length=int(config["inference"]["max_length"]),
                            trust_remote_code=bool(cfg.get("trust_remote_code")), **split_kw)
    _, selection, weight_of = selection_from_config(config)
    train, val = (load_split(paths, datasets, s, rep) for s in ("train", "validation"))
    weights = np.ones(train.X.shape[1], dtype=np.float32)
    for layer, w in weight_of.items():
        weights[layer] = w
    Z = np.concatenate([aggregate(train.X, selection, weights), aggregate(val.X, selection, weights)])
    model = fit_run_categories("auto", datasets, cfg["seed"], split_kw, Z,
                               np.concatenate([train.ids, val.ids]), np.concatenate([train.groups, val.groups]),
                               len(train))
    if model is None:
        raise SirenError(f"no category head fitted: none of {datasets} has rows that carry categories "
                         "mapped in configs/categories.yaml")
    model.save(folder)
    print(json.dumps({"trained": model.trained, "not_trained": model.info["not_trained"],
                      "thresholds": dict(zip(model.trained, model.thresholds.tolist())),
                      "setting": model.info["setting"]}, indent=2))
    print(f"wrote {folder / 'categories.safetensors'} and {folder / 'categories.json'}")
    return 0
