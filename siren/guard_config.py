"""Validation of a guard's `siren_config.json` (see `siren.artifact` for the format): every
check raises a one-line SirenError naming the file and the key. No torch here."""

from __future__ import annotations

import math
import re

from siren.errors import SirenError
from siren.features import POOLING_TYPES

__all__ = ["validate_config", "check_fits", "neuron_key", "head_ensemble", "NEURON_KEY"]

NEURON_KEY = re.compile(r"^layer(\d+)_(.+)$")


def neuron_key(layer: int, pooling_type: str) -> str:
    """The `selected_neurons_dict` key of a layer: `layer<i>_<pooling_type>`."""
    return f"layer{int(layer)}_{pooling_type}"


def head_ensemble(config: dict) -> int:
    """How many heads the guard's head averages (`siren.head_ensemble`; 1 when absent)."""
    return int((config.get("siren") or {}).get("head_ensemble", 1))


def _need(d: dict, key: str, where: str, source: str):
    if not isinstance(d, dict) or key not in d:
        raise SirenError(f"{source}: missing key {where}.{key}" if where else f"{source}: missing key {key}")
    return d[key]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_config(config: dict, source: str) -> dict:
    """Check a guard config; raise SirenError naming `source` and the key. Returns config."""
    if not isinstance(config, dict):
        raise SirenError(f"{source}: expected a JSON object, got {type(config).__name__}")
    task = config.get("task", "content")
    if task != "content":
        raise SirenError(f"{source}: task is {task!r}; only 'content' guards are supported")
    base = _need(config, "base_model", "", source)
    model_id = _need(base, "model_id", "base_model", source)
    if not isinstance(model_id, str) or not model_id:
        raise SirenError(f"{source}: base_model.model_id must be a non-empty string")
    if base.get("revision") is not None and not isinstance(base["revision"], str):
        raise SirenError(f"{source}: base_model.revision must be a string or null")
    total = _check_module(_need(config, "siren_module", "", source), source)
    _check_mlp(_need(config, "mlp", "", source), total, source)
    _check_inference(_need(config, "inference", "", source), source)
    _check_extra(config, source)
    return config


def _check_module(sm: dict, source: str) -> int:
    """siren_module's pooling type, layers, weights and neurons; returns the number of neurons."""
    pooling = _need(sm, "pooling_type", "siren_module", source)
    if pooling not in POOLING_TYPES:
        raise SirenError(f"{source}: siren_module.pooling_type {pooling!r} is not supported: "
                         f"use one of {', '.join(POOLING_TYPES)}")
    layers = _need(sm, "selected_layers", "siren_module", source)
    if not isinstance(layers, list) or not layers or not all(_is_int(l) and l >= 0 for l in layers):
        raise SirenError(f"{source}: siren_module.selected_layers must be a non-empty list of layer indices >= 0")
    if len(set(layers)) != len(layers):
        raise SirenError(f"{source}: siren_module.selected_layers {layers} has duplicates")
    weights = _need(sm, "layer_weights", "siren_module", source)
    if not isinstance(weights, dict):
        raise SirenError(f"{source}: siren_module.layer_weights must be an object {{\"<layer>\": weight}}")
    for k, w in weights.items():
        if not re.fullmatch(r"\d+", str(k)) or int(k) not in layers:
            raise SirenError(f"{source}: siren_module.layer_weights key {k!r} is not a selected layer {sorted(layers)}")
        if not _is_number(w) or not math.isfinite(w):
            raise SirenError(f"{source}: siren_module.layer_weights[{k!r}] = {w!r} is not a finite number")
    neurons = _need(sm, "selected_neurons_dict", "siren_module", source)
    if not isinstance(neurons, dict):
        raise SirenError(f"{source}: siren_module.selected_neurons_dict must be an object")
    return _check_neurons(neurons, pooling, layers, source)


def _check_neurons(neurons: dict, pooling: str, layers: list[int], source: str) -> int:
    seen, total = set(), 0
    where = "siren_module.selected_neurons_dict"
    for key, idx in neurons.items():
        m = NEURON_KEY.match(str(key))
        if not m:
            raise SirenError(f"{source}: {where} key {key!r} is not 'layer<i>_<pooling_type>'")
        layer, suffix = int(m.group(1)), m.group(2)
        if suffix != pooling:
            raise SirenError(f"{source}: {where} key {key!r} does not match pooling_type {pooling!r}")
        if layer not in layers:
            raise SirenError(f"{source}: {where} has {key!r} but layer {layer} is not "
                             f"in selected_layers {sorted(layers)}")
        if layer in seen:
            raise SirenError(f"{source}: {where} lists layer {layer} twice")
        seen.add(layer)
        if not isinstance(idx, list) or not idx or not all(_is_int(i) and i >= 0 for i in idx):
            raise SirenError(f"{source}: {where}[{key!r}] must be a non-empty list of neuron indices >= 0")
        if len(set(idx)) != len(idx):
            raise SirenError(f"{source}: {where}[{key!r}] has duplicate neurons")
        total += len(idx)
    missing = sorted(set(layers) - seen)
    if missing:
        raise SirenError(f"{source}: {where} has no entry for selected layers {missing}")
    return total


def _check_mlp(mlp: dict, total: int, source: str) -> None:
    input_dim = _need(mlp, "input_dim", "mlp", source)
    if not _is_int(input_dim) or input_dim != total:
        raise SirenError(f"{source}: mlp.input_dim is {input_dim!r} but selected_neurons_dict lists {total} neurons")
    dims = _need(mlp, "layer_dims", "mlp", source)
    rates = _need(mlp, "dropout_rates", "mlp", source)
    if not isinstance(dims, list) or not all(_is_int(d) and d > 0 for d in dims):
        raise SirenError(f"{source}: mlp.layer_dims must be a list of positive integers")
    if not isinstance(rates, list) or len(rates) != len(dims) or not all(_is_number(p) and 0 <= p < 1 for p in rates):
        raise SirenError(f"{source}: mlp.dropout_rates must be {len(dims)} numbers in [0, 1), one per layer_dims entry")
    if mlp.get("num_classes", 2) != 2:
        raise SirenError(f"{source}: mlp.num_classes is {mlp.get('num_classes')!r}; the guard is binary (2)")


def _check_inference(inf: dict, source: str) -> None:
    max_length = _need(inf, "max_length", "inference", source)
    if not _is_int(max_length) or max_length <= 0:
        raise SirenError(f"{source}: inference.max_length must be a positive integer, got {max_length!r}")
    thr = _need(inf, "default_threshold", "inference", source)
    if not _is_number(thr) or not 0 <= thr <= 1:
        raise SirenError(f"{source}: inference.default_threshold must be a number in [0, 1], got {thr!r}")


def _check_extra(config: dict, source: str) -> None:
    """Our own `siren` block: recorded backbone sizes, and a fold ensemble's head count."""
    extra = config.get("siren")
    if extra is not None and not isinstance(extra, dict):
        raise SirenError(f"{source}: key siren must be an object")
    extra = extra or {}
    _check_format_version(extra.get("format_version", 1), source)  # absent: llm-siren's, format 1
    for key in ("num_layers", "hidden_size", "head_ensemble"):
        if key in extra and not (_is_int(extra[key]) and extra[key] > 0):
            raise SirenError(f"{source}: siren.{key} must be a positive integer, got {extra[key]!r}")
    k = extra.get("head_ensemble", 1)
    if any(d % k for d in config["mlp"]["layer_dims"]):
        raise SirenError(f"{source}: siren.head_ensemble {k} does not divide mlp.layer_dims "
                         f"{config['mlp']['layer_dims']} (K heads of equal width side by side)")
    check_fits(config, extra.get("num_layers"), extra.get("hidden_size"), source,
               what="as siren.num_layers / siren.hidden_size record")


def _check_format_version(version, source: str) -> None:
    from siren.artifact import FORMAT_VERSION  # the writer's version lives beside the writer

    if not (_is_int(version) and 1 <= version <= FORMAT_VERSION):
        raise SirenError(f"{source}: siren.format_version is {version!r}, but this SIREN reads format "
                         f"{FORMAT_VERSION} at most: the guard was written by a newer SIREN; upgrade (git pull, "
                         "then bash scripts/setup.sh)")


def check_fits(config: dict, num_layers: int | None, hidden_size: int | None, source: str,
               what: str = "from the backbone's config") -> None:
    """Every selected layer < num_layers and every neuron < hidden_size (None: not checked).

    Used on load (against the sizes the guard records) and before scoring or evaluating
    (against the backbone's own config), so that a guard for another backbone is refused by name
    instead of indexing out of range."""
    sm = config["siren_module"]
    if num_layers is not None:
        beyond = [l for l in sm["selected_layers"] if l >= num_layers]
        if beyond:
            raise SirenError(f"{source}: selected layer {max(beyond)} does not exist in a backbone with {num_layers} "
                             f"layers ({what}; layers 0 .. {num_layers - 1}): wrong backbone or a damaged config")
    if hidden_size is not None:
        for key, idx in sm["selected_neurons_dict"].items():
            if max(idx) >= hidden_size:
                raise SirenError(f"{source}: {key} selects neuron {max(idx)}, but the hidden size is {hidden_size} "
                                 f"({what}; neurons 0 .. {hidden_size - 1}): wrong backbone or a damaged config")
