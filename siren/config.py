"""Defaults in one place (`configs/defaults.yaml`); CLI flags and shell variables override them.

Every key siren knows is listed in `SCHEMA` with its type; a key in the YAML that is not, or
one that is missing, is an error, so a typo never silently falls back to a default. The
resolved config is written next to every result (`results.json`, `eval_results.json`).

Also here: the run folder of a backbone (`output_dir`), the one place that maps a model to
`train/probes/optuna/{MODEL}_general/`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from siren.backbones import REPO_ROOT, model_slug
from siren.errors import SirenError

DEFAULTS_PATH = REPO_ROOT / "configs" / "defaults.yaml"
OUTPUT_ROOT = REPO_ROOT / "train" / "probes" / "optuna"

# key -> (type of a set value, or "list" of that type); every value may also be null.
SCHEMA: dict[str, tuple[type, ...]] = {
    "model": (str,), "datasets": (list, str), "data_dir": (str,), "max_per_split": (list, int),
    "seed": (int,), "val_ratio": (float,), "pooling_types": (list, str), "max_length": (int,),
    "batch_size": (int,), "batch_tokens": (int,), "dtype": (str,), "device": (str,), "cache_dtype": (str,),
    "cache_dir": (str,), "c_values": (list, float), "probe_tol": (float,), "probe_c_rule": (str,), "probe_refit": (bool,), "selection_thresholds": (list, float),
    "layer_weight_floor": (float,), "n_trials": (int,), "n_folds": (int,), "n_jobs": (int,), "storage": (str,),
    "study_name": (str,), "max_epochs": (int,), "patience": (int,), "head_batch_size": (int,),
    "pruner": (str,), "head_width_cap": (int,), "head_dtype": (str,), "final_head": (str,),
    "scale_by_layer_weight": (bool,), "threshold_from_cv": (bool,),
    "decision_threshold": (float,), "out_dir": (str,), "extra_datasets": (list, str),
    "trust_remote_code": (bool,),
    # the answer verdict's head and the stream rule (siren.pipeline.answer; issue 37)
    "answer_head": (str,), "answer_cuts": (list, int), "answer_ramp_tokens": (float,),
    "answer_harmful_min_tokens": (int,), "answer_c": (float,),
    "answer_prompt_rows": (bool,), "answer_main_weight": (float,),
    "stream_debounce": (int,), "stream_min_answer_tokens": (int,), "stream_ema": (float,),
    "stream_target_false_alarm": (float,),
    "serve": (dict,),  # `siren serve` limits; its keys are checked by siren.runtime.serve.ServeLimits
}


def _type_ok(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check(cfg: dict, source: str) -> dict:
    """SirenError naming `source` and the key if `cfg` has a key not in SCHEMA or a value of the
    wrong type; returns cfg."""
    if not isinstance(cfg, dict):
        raise SirenError(f"{source}: expected a mapping of config keys, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(SCHEMA))
    if unknown:
        raise SirenError(f"{source}: unknown config key(s) {', '.join(map(repr, unknown))}; "
                         f"known keys: {', '.join(sorted(SCHEMA))}")
    for key, value in cfg.items():
        spec = SCHEMA[key]
        if value is None:
            continue
        if spec[0] is list:
            ok = isinstance(value, list) and all(_type_ok(v, spec[1]) for v in value)
            want = f"a list of {spec[1].__name__}"
        else:
            ok, want = _type_ok(value, spec[0]), spec[0].__name__
        if not ok:
            raise SirenError(f"{source}: {key} must be {want} or null, got {value!r}")
    return cfg


def defaults() -> dict:
    """The content of configs/defaults.yaml, checked against SCHEMA (every key must be there)."""
    try:
        with open(DEFAULTS_PATH, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise SirenError(f"cannot read {DEFAULTS_PATH}: {err}") from err
    check(cfg, str(DEFAULTS_PATH))
    missing = sorted(set(SCHEMA) - set(cfg))
    if missing:
        raise SirenError(f"{DEFAULTS_PATH}: missing key(s) {', '.join(missing)}")
    return cfg


def resolve(args, keys) -> dict:
    """{key: value} for `keys`: the default, overridden by the attribute of `args` when not None."""
    unknown = [k for k in keys if k not in SCHEMA]
    if unknown:
        raise SirenError(f"unknown config key(s) {unknown}")
    cfg = defaults()
    out = {}
    for key in keys:
        value = getattr(args, key, None)
        out[key] = cfg[key] if value is None else value
    return out


def output_dir(model: str) -> Path:
    """The run folder of a backbone: train/probes/optuna/{model_slug(model)}_general/.

    Training writes there and `siren eval` / `siren score` look there, so a guard trained for a
    registry name, a Hub id or a local folder is found again under the same name."""
    return OUTPUT_ROOT / f"{model_slug(model)}_general"


def default_datasets(data_dir: str | None) -> list[str]:
    """The `datasets` of defaults.yaml (the paper's list). With a local data dir (`data_dir`, else
    $SIREN_DATA_DIR), only those that have a folder there, the others named in the log, so a
    default offline run trains on what it has. Datasets named by the user are never dropped."""
    from siren.data import resolve_data_dir
    from siren.log import log

    datasets = list(defaults()["datasets"])
    folder = resolve_data_dir(data_dir)
    if folder is None:
        return datasets
    present = [d for d in datasets if (folder / d).is_dir()]
    for d in datasets:
        if d not in present:
            log(f"{d}: not in {folder}, left out (name it in DATASETS / --datasets to require it)")
    if not present:
        raise SirenError(f"none of the default datasets ({', '.join(datasets)}) has a folder in {folder}: "
                         "set DATASETS / --datasets or the data dir")
    return present


def find_guard(model: str) -> str:
    """Where the guard for `model` is: a guard folder given directly; else the run folder of a
    backbone (`output_dir`: registry name, local backbone folder or Hub id); else, for a Hub id
    with no local run, the id itself (a Hub repo holding a guard). SirenError otherwise."""
    from siren.artifact import CONFIG_NAME
    from siren.backbones import model_kind

    path = Path(model).expanduser()
    if (path / CONFIG_NAME).is_file():
        return str(path)
    kind = model_kind(model)
    run = output_dir(model)
    if (run / CONFIG_NAME).is_file():
        return str(run)
    if kind == "hub":
        return model
    if kind == "local":
        raise SirenError(f"{path} is not a guard folder (no {CONFIG_NAME}), and no guard was trained for it as a "
                         f"backbone folder (expected {run}): pass a guard folder, or train one with "
                         f"`siren train --model {model}`")
    raise SirenError(f"no trained guard for backbone {model!r}: expected {run}. Train one with "
                     f"`siren train --model {model}` or pass a guard folder")
