"""Save and load the trained guard: a folder in the `llm-siren` format, plus a data-only pickle.

Guard folder (what `siren_guard.SirenGuard.from_pretrained(folder)` of PyPI `llm-siren` reads):

- `siren_config.json`: `task: "content"`; `base_model: {model_id, revision}`; `siren_module:
  {pooling_type, selected_layers, layer_weights {"<i>": w}, selected_neurons_dict
  {"layer<i>_<pooling_type>": [neuron, ...]}}`; `mlp: {input_dim, layer_dims, dropout_rates,
  num_classes: 2}`; `inference: {max_length, default_threshold}`. We add a `siren` block of our
  own (`format_version` and whatever the trainer passes as `extra`, e.g. backbone name, number
  of layers, hidden size); `llm-siren` ignores it, and we do not require it.
- `siren.safetensors`: the head's `network.<k>.weight/bias` (fp32), `k` following
  `Sequential(Linear, ReLU, [Dropout if p > 0]) * n, Linear(., 2)`.

Writes are atomic (temp files, then `os.replace`) and byte-deterministic for equal inputs
(sorted JSON keys, safetensors of the same fp32 tensors, no timestamps).

`best_model.pkl` (the paper's file name) is written and read as DATA ONLY: dicts, lists,
tuples, str, int, float, bool, None and numpy arrays/scalars. Loading uses a restricted
unpickler that resolves only the numpy callables arrays need, so a crafted pickle cannot run
code. No Optuna, no training imports here.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from siren.errors import SirenError
from siren.features import POOLING_TYPES
from siren.fileio import atomic_write, atomic_write_with, fsync_dir, jsonable

CONFIG_NAME = "siren_config.json"
WEIGHTS_NAME = "siren.safetensors"
BEST_MODEL_NAME = "best_model.pkl"
FORMAT_VERSION = 1
_NEURON_KEY = re.compile(r"^layer(\d+)_(.+)$")


def neuron_key(layer: int, pooling_type: str) -> str:
    """The `selected_neurons_dict` key of a layer: `layer<i>_<pooling_type>`."""
    return f"layer{int(layer)}_{pooling_type}"


def head_layout(input_dim: int, layer_dims: list[int], dropout_rates: list[float],
                num_classes: int = 2) -> dict[str, tuple[int, ...]]:
    """Expected `network.<k>.weight/bias` shapes of the head for this architecture."""
    shapes: dict[str, tuple[int, ...]] = {}
    k, prev = 0, int(input_dim)
    for dim, p in zip(layer_dims, dropout_rates):
        shapes[f"network.{k}.weight"] = (int(dim), prev)
        shapes[f"network.{k}.bias"] = (int(dim),)
        k += 3 if p > 0 else 2  # Linear, ReLU, [Dropout]
        prev = int(dim)
    shapes[f"network.{k}.weight"] = (int(num_classes), prev)
    shapes[f"network.{k}.bias"] = (int(num_classes),)
    return shapes


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------- save

def build_config(*, base_model_id: str, revision: str | None, pooling_type: str,
                 selection: dict[int, np.ndarray], layer_weights: dict[int, float], layer_dims: list[int],
                 dropout_rates: list[float], max_length: int, decision_threshold: float,
                 extra: dict | None = None) -> dict:
    """The `siren_config.json` content (validated) for these inputs."""
    if pooling_type not in POOLING_TYPES:
        raise SirenError(f"unknown pooling type {pooling_type!r}: use one of {', '.join(POOLING_TYPES)}")
    layers = sorted(int(l) for l in selection)
    if not layers:
        raise SirenError("empty selection: the guard needs at least one layer with selected neurons")
    unknown = sorted(set(int(l) for l in layer_weights) - set(layers))
    if unknown:
        raise SirenError(f"layer_weights has layers {unknown} that are not in the selection {layers}")
    neurons = {}
    for l in layers:
        idx = np.asarray(selection[l] if l in selection else selection[str(l)]).reshape(-1)
        if idx.size == 0:
            raise SirenError(f"layer {l} has no selected neurons: drop it from the selection")
        if not np.issubdtype(idx.dtype, np.integer):
            raise SirenError(f"layer {l}: neuron indices must be integers, got dtype {idx.dtype}")
        neurons[neuron_key(l, pooling_type)] = [int(i) for i in idx]
    weights = {}
    lw = {int(k): v for k, v in layer_weights.items()}
    for l in layers:
        w = float(lw.get(l, 1.0))
        if not math.isfinite(w):
            raise SirenError(f"layer weight of layer {l} is {w}: must be finite")
        weights[str(l)] = w
    input_dim = sum(len(v) for v in neurons.values())
    config = {
        "task": "content",
        "base_model": {"model_id": str(base_model_id), "revision": revision},
        "siren_module": {
            "pooling_type": pooling_type,
            "selected_layers": layers,
            "layer_weights": weights,
            "selected_neurons_dict": neurons,
        },
        "mlp": {
            "input_dim": int(input_dim),
            "layer_dims": [int(d) for d in layer_dims],
            "dropout_rates": [float(p) for p in dropout_rates],
            "num_classes": 2,
        },
        "inference": {"max_length": int(max_length), "default_threshold": float(decision_threshold)},
        "siren": {**jsonable(dict(extra or {})), "format_version": FORMAT_VERSION},
    }
    validate_config(config, source="the guard being saved")
    return config


def save_guard(folder, *, base_model_id: str, revision: str | None, pooling_type: str,
               selection: dict[int, np.ndarray], layer_weights: dict[int, float],
               head_state: dict[str, torch.Tensor], layer_dims: list[int], dropout_rates: list[float],
               max_length: int, decision_threshold: float, extra: dict | None = None) -> Path:
    """Write `siren_config.json` + `siren.safetensors` into `folder`; returns the folder.

    selection: layer -> neuron indices (in feature order). layer_weights: layer -> weight
    (missing layers get 1.0). head_state: the MLP head's state dict (`network.<k>.*`).
    A new folder appears whole (written under a temp name, then renamed); in an existing
    folder each file is replaced atomically (weights first, then the config), other files kept.
    """
    from safetensors.torch import save_file as safetensors_save_file

    config = build_config(base_model_id=base_model_id, revision=revision, pooling_type=pooling_type,
                          selection=selection, layer_weights=layer_weights, layer_dims=layer_dims,
                          dropout_rates=dropout_rates, max_length=max_length, decision_threshold=decision_threshold,
                          extra=extra)
    mlp = config["mlp"]
    expected = head_layout(mlp["input_dim"], mlp["layer_dims"], mlp["dropout_rates"], mlp["num_classes"])
    # No copies of a float32 CPU head (an ensemble head can be hundreds of MB): the file is
    # streamed from the tensors themselves.
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head_state.items()}
    _check_head_state(tensors, expected, "the head state being saved")
    write_weights = lambda tmp: safetensors_save_file(tensors, tmp, metadata={"format": "pt"})  # noqa: E731
    config_bytes = _json_bytes(config)

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SirenError(f"guard folder {folder} exists and is not a folder")
    if folder.is_dir():
        atomic_write_with(folder / WEIGHTS_NAME, write_weights)
        atomic_write(folder / CONFIG_NAME, config_bytes)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        atomic_write_with(tmp / WEIGHTS_NAME, write_weights)  # fsynced, so the renamed folder is whole
        atomic_write(tmp / CONFIG_NAME, config_bytes)
        os.chmod(tmp, 0o755)
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def set_default_threshold(folder, decision_threshold: float) -> None:
    """Set the decision threshold of the guard in `folder`: `inference.default_threshold` in its
    config and, when present, `threshold` in its best_model.pkl (the formats' names), so the two
    files agree."""
    threshold = float(decision_threshold)
    if not (0.0 <= threshold <= 1.0):
        raise SirenError(f"decision_threshold {threshold} must be in [0, 1]")
    config = load_guard_config(folder)
    config["inference"]["default_threshold"] = threshold
    pkl = Path(folder) / BEST_MODEL_NAME
    if pkl.is_file():
        payload = load_best_model_pkl(pkl)
        payload["threshold"] = threshold
        save_best_model_pkl(pkl, payload)
    atomic_write(Path(folder) / CONFIG_NAME, _json_bytes(config))


# ---------------------------------------------------------------- load + validation

def _need(d: dict, key: str, where: str, source: str):
    if not isinstance(d, dict) or key not in d:
        raise SirenError(f"{source}: missing key {where}.{key}" if where else f"{source}: missing key {key}")
    return d[key]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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

    sm = _need(config, "siren_module", "", source)
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
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise SirenError(f"{source}: siren_module.layer_weights[{k!r}] = {w!r} is not a finite number")
    neurons = _need(sm, "selected_neurons_dict", "siren_module", source)
    if not isinstance(neurons, dict):
        raise SirenError(f"{source}: siren_module.selected_neurons_dict must be an object")
    seen = set()
    total = 0
    for key, idx in neurons.items():
        m = _NEURON_KEY.match(str(key))
        if not m:
            raise SirenError(f"{source}: siren_module.selected_neurons_dict key {key!r} is not 'layer<i>_<pooling_type>'")
        layer, suffix = int(m.group(1)), m.group(2)
        if suffix != pooling:
            raise SirenError(f"{source}: siren_module.selected_neurons_dict key {key!r} does not match "
                             f"pooling_type {pooling!r}")
        if layer not in layers:
            raise SirenError(f"{source}: siren_module.selected_neurons_dict has {key!r} but layer {layer} is not "
                             f"in selected_layers {sorted(layers)}")
        if layer in seen:
            raise SirenError(f"{source}: siren_module.selected_neurons_dict lists layer {layer} twice")
        seen.add(layer)
        if not isinstance(idx, list) or not idx or not all(_is_int(i) and i >= 0 for i in idx):
            raise SirenError(f"{source}: siren_module.selected_neurons_dict[{key!r}] must be a non-empty list "
                             "of neuron indices >= 0")
        if len(set(idx)) != len(idx):
            raise SirenError(f"{source}: siren_module.selected_neurons_dict[{key!r}] has duplicate neurons")
        total += len(idx)
    missing = sorted(set(layers) - seen)
    if missing:
        raise SirenError(f"{source}: siren_module.selected_neurons_dict has no entry for selected layers {missing}")

    mlp = _need(config, "mlp", "", source)
    input_dim = _need(mlp, "input_dim", "mlp", source)
    if not _is_int(input_dim) or input_dim != total:
        raise SirenError(f"{source}: mlp.input_dim is {input_dim!r} but selected_neurons_dict lists {total} neurons")
    dims = _need(mlp, "layer_dims", "mlp", source)
    rates = _need(mlp, "dropout_rates", "mlp", source)
    if not isinstance(dims, list) or not all(_is_int(d) and d > 0 for d in dims):
        raise SirenError(f"{source}: mlp.layer_dims must be a list of positive integers")
    if not isinstance(rates, list) or len(rates) != len(dims) or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 1 for p in rates):
        raise SirenError(f"{source}: mlp.dropout_rates must be {len(dims)} numbers in [0, 1), one per layer_dims entry")
    if mlp.get("num_classes", 2) != 2:
        raise SirenError(f"{source}: mlp.num_classes is {mlp.get('num_classes')!r}; the guard is binary (2)")

    inf = _need(config, "inference", "", source)
    max_length = _need(inf, "max_length", "inference", source)
    if not _is_int(max_length) or max_length <= 0:
        raise SirenError(f"{source}: inference.max_length must be a positive integer, got {max_length!r}")
    decision_threshold = _need(inf, "default_threshold", "inference", source)
    if (not isinstance(decision_threshold, (int, float)) or isinstance(decision_threshold, bool)
            or not 0 <= decision_threshold <= 1):
        raise SirenError(f"{source}: inference.default_threshold must be a number in [0, 1], got {decision_threshold!r}")
    extra = config.get("siren")
    if extra is not None and not isinstance(extra, dict):
        raise SirenError(f"{source}: key siren must be an object")
    extra = extra or {}
    for key in ("num_layers", "hidden_size"):
        if key in extra and not (_is_int(extra[key]) and extra[key] > 0):
            raise SirenError(f"{source}: siren.{key} must be a positive integer, got {extra[key]!r}")
    check_fits(config, extra.get("num_layers"), extra.get("hidden_size"), source,
               what="as siren.num_layers / siren.hidden_size record")
    return config


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


def load_guard_config(folder) -> dict:
    """Read and validate `<folder>/siren_config.json`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SirenError(f"guard folder {folder} does not exist (expected {CONFIG_NAME} + {WEIGHTS_NAME})")
    path = folder / CONFIG_NAME
    return load_config_file(path)


def load_config_file(path) -> dict:
    """Read and validate a `siren_config.json` at an explicit path (e.g. a Hub download)."""
    path = Path(path)
    if not path.is_file():
        raise SirenError(f"{path} is missing: not a guard folder (expected {CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SirenError(f"{path} is not valid JSON ({err}): the file is corrupt") from err
    except RecursionError:
        raise SirenError(f"{path} is nested too deeply to be a guard config: the file is corrupt") from None
    return validate_config(config, source=str(path))


def _check_head_state(state: dict, expected: dict[str, tuple[int, ...]], source: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SirenError(f"{source}: head tensors do not match mlp in the config: "
                         f"missing {missing}, unexpected {unexpected}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise SirenError(f"{source}: tensor {k} has shape {tuple(state[k].shape)}, the config implies {shape}")
        if not torch.isfinite(state[k]).all():
            raise SirenError(f"{source}: tensor {k} has non-finite values")


# safetensors dtype names -> torch dtypes (the ones a head or a tensor file of ours can hold)
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}
_SAFETENSORS_MAX_HEADER = 100_000_000     # the format's own bound on the JSON header


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """A safetensors file -> {name: CPU tensor}, read tensor by tensor straight into fresh tensors.

    Why not `safetensors.torch.load(path.read_bytes())`: that holds the whole file as bytes
    beside the tensors made from it (twice the file in RAM: +0.76 GB for a 379 MB fold-ensemble
    head, the training run's peak); `load_file` maps the file instead, so the tensors could
    change if the file were rewritten in place. Here RAM holds the tensors once, owned by us.
    Checks the layout as the format defines it (header size, dtypes, shapes, and data offsets that
    tile the data region exactly); raises ValueError saying what is wrong (callers name the file).
    Little-endian data, as the format stores it (every CPU torch runs on here is little-endian).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than the 8-byte header size")
        n = int.from_bytes(head, "little")
        if n > min(_SAFETENSORS_MAX_HEADER, size - 8):
            raise ValueError(f"header size {n} does not fit in the file's {size} bytes")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"the header is not JSON ({err})") from None
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        header.pop("__metadata__", None)
        spans = []
        for name, info in header.items():
            try:
                dtype = _SAFETENSORS_DTYPES[info["dtype"]]
                shape = [int(d) for d in info["shape"]]
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"tensor {name!r}: no valid dtype, shape and data_offsets ({info!r})") from None
            nbytes = math.prod(shape) * dtype.itemsize
            if min(shape, default=0) < 0 or end - begin != nbytes:
                raise ValueError(f"tensor {name!r}: {info['dtype']} {shape} needs {nbytes} bytes, "
                                 f"its offsets span {end - begin}")
            spans.append((begin, end, name, dtype, shape))
        spans.sort(key=lambda s: (s[0], s[1]))
        data_len, pos = size - 8 - n, 0
        for begin, end, name, _, _ in spans:
            if begin != pos:
                raise ValueError(f"tensor {name!r} starts at byte {begin} of the data, expected {pos}")
            pos = end
        if pos != data_len:
            raise ValueError(f"the tensors cover {pos} of the {data_len} data bytes")
        out: dict[str, torch.Tensor] = {}
        for begin, end, name, dtype, shape in spans:    # in file order: one sequential read
            buf = torch.empty(end - begin, dtype=torch.uint8)
            view = memoryview(buf.numpy())
            got = 0
            while got < len(view):
                k = f.readinto(view[got:])
                if not k:
                    raise ValueError(f"the file ended inside tensor {name!r}")
                got += k
            out[name] = buf.view(dtype).reshape(shape)
    return out


def load_head_state(folder_or_file, config: dict) -> dict[str, torch.Tensor]:
    """Read `siren.safetensors` (a folder or the file) and check it against `config["mlp"]`."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise SirenError(f"{path} is missing: the guard folder has no head weights")
    try:
        state = read_safetensors(path)
    except (ValueError, OSError) as err:
        raise SirenError(f"{path} could not be read as safetensors ({err}): the file is corrupt") from err
    mlp = config["mlp"]
    expected = head_layout(mlp["input_dim"], mlp["layer_dims"], mlp["dropout_rates"], mlp.get("num_classes", 2))
    _check_head_state(state, expected, str(path))
    return state


def build_head(config: dict, state: dict[str, torch.Tensor]):
    """An eval-mode `siren.mlp.MLPHead` for `config["mlp"]` holding `state` (fp32, CPU)."""
    from siren.mlp import MLPHead

    mlp = config["mlp"]
    head = MLPHead.from_state(mlp["input_dim"], list(mlp["layer_dims"]), list(mlp["dropout_rates"]), state,
                              num_classes=mlp.get("num_classes", 2))
    head = head.to("cpu", torch.float32).eval()
    head.requires_grad_(False)
    return head


def load_head(folder):
    """The guard folder's MLP head (eval mode, fp32, CPU), checked against its config."""
    config = load_guard_config(folder)
    return build_head(config, load_head_state(folder, config))


def selection_from_config(config: dict) -> tuple[list[int], dict[int, np.ndarray], dict[int, float]]:
    """(selected layers ascending, layer -> neuron indices in listed order, layer -> weight)."""
    sm = config["siren_module"]
    layers = sorted(int(l) for l in sm["selected_layers"])
    neurons = {}
    for key, idx in sm["selected_neurons_dict"].items():
        neurons[int(_NEURON_KEY.match(key).group(1))] = np.asarray(idx, dtype=np.int64)
    weights = {l: float(sm["layer_weights"].get(str(l), 1.0)) for l in layers}
    return layers, neurons, weights


# ---------------------------------------------------------------- best_model.pkl (data only)

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


def best_model_payload(folder, *, model: str, base_model: dict, metrics: dict,
                       head_state: dict[str, torch.Tensor] | None = None) -> dict:
    """The paper's `best_model.pkl` content for the guard saved in `folder`, built from its
    config and weights, so the pickle and the guard cannot disagree (threshold included).

    head_state: the very tensors just passed to `save_guard` for this folder (checked against its
    config), instead of reading the weights back: a fold-ensemble head is hundreds of MB, and the
    training run's peak memory would hold it twice."""
    config = load_guard_config(folder)
    layers, neurons, weights = selection_from_config(config)
    mlp = config["mlp"]
    if head_state is None:
        state = load_head_state(folder, config)
    else:
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head_state.items()}
        _check_head_state(state, head_layout(mlp["input_dim"], mlp["layer_dims"], mlp["dropout_rates"],
                                             mlp.get("num_classes", 2)), "the head state given for best_model.pkl")
    return {
        "format": "siren-best-model/1",
        "model": model,
        "base_model": base_model,
        "pooling_type": config["siren_module"]["pooling_type"],
        "selected_layers": layers,
        "selected_neurons": {str(l): neurons[l] for l in layers},
        "layer_weights": {str(l): weights[l] for l in layers},
        "mlp": dict(config["mlp"]),
        # in the network's module order: safetensors gives the tensors in no fixed order
        "state_dict": {k: state[k].numpy() for k in head_layout(mlp["input_dim"], mlp["layer_dims"],
                                                                mlp["dropout_rates"], mlp["num_classes"])},
        "threshold": float(config["inference"]["default_threshold"]),
        "max_length": int(config["inference"]["max_length"]),
        "metrics": metrics,
    }


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
