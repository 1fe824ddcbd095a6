"""Save and load the trained guard: a folder in the `llm-siren` format (ours stores a fold
ensemble compactly), plus the paper's data-only `best_model.pkl`.

Guard folder (what `siren_guard.SirenGuard.from_pretrained(folder)` of PyPI `llm-siren` reads):

- `siren_config.json`: `task: "content"`; `base_model: {model_id, revision}`; `siren_module:
  {pooling_type, selected_layers, layer_weights {"<i>": w}, selected_neurons_dict
  {"layer<i>_<pooling_type>": [neuron, ...]}}`; `mlp: {input_dim, layer_dims, dropout_rates,
  num_classes: 2}`; `inference: {max_length, default_threshold}`. We add a `siren` block of our
  own (`format_version` and whatever the trainer passes as `extra`, e.g. backbone name, number
  of layers, hidden size); `llm-siren` ignores it, and we do not require it.
- `siren.safetensors`: the head's `network.<k>.weight/bias` (fp32), `k` following
  `Sequential(Linear, ReLU, [Dropout if p > 0]) * n, Linear(., 2)`.

A fold ensemble (`siren.head_ensemble: K` in the config; format_version 2) computes the mean of
K heads' logits as one network of `mlp.layer_dims` (K heads side by side, hidden layers
block-diagonal), but stores each head once and no zero block: `heads.<i>.network.<k>.*`, each of
one head's width (`mlp.layer_dims / K`). Only our loader reads that; `export_llm_siren` writes the
dense one-MLP folder `llm-siren` loads (equal scores). A single head is stored exactly as
`llm-siren` reads it, and folders written before format 2 (a dense block-diagonal ensemble) load
as they always did.

Writes are atomic (temp files, then `os.replace`) and byte-deterministic for equal inputs
(sorted JSON keys, safetensors of the same fp32 tensors in name order, no timestamps).

`best_model.pkl` (the paper's file name) is data only (`siren.best_model`) and holds no second
copy of the weights: the selection, the head's shape, the threshold and metrics, and a reference
(file name, sha256) to the folder's `siren.safetensors`; `load_best_model` gives the head back.
No Optuna, no training imports here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from siren.best_model import load_best_model_pkl, save_best_model_pkl  # noqa: F401 (re-exported)
from siren.errors import SirenError
from siren.features import POOLING_TYPES
from siren.fileio import atomic_write, atomic_write_with, fsync_dir, jsonable
from siren.guard_config import NEURON_KEY, check_fits, head_ensemble, neuron_key, validate_config  # noqa: F401
from siren.tensorfile import read_safetensors, write_safetensors  # noqa: F401 (read_safetensors re-exported)

CONFIG_NAME = "siren_config.json"
WEIGHTS_NAME = "siren.safetensors"
BEST_MODEL_NAME = "best_model.pkl"
FORMAT_VERSION = 2   # of a fold ensemble stored as its K heads (siren.head_ensemble); a single head: 1


def head_layout(input_dim: int, layer_dims: list[int], dropout_rates: list[float],
                num_classes: int = 2, ensemble: int = 1) -> dict[str, tuple[int, ...]]:
    """Expected stored tensor shapes of the head for this architecture: `network.<k>.weight/bias`,
    or for an ensemble of K heads (layer_dims: the whole network's widths) `heads.<i>.network.<k>.*`
    of one head's widths each."""
    if ensemble > 1:
        one = head_layout(input_dim, [int(d) // ensemble for d in layer_dims], dropout_rates, num_classes)
        return {f"heads.{i}.{k}": shape for i in range(ensemble) for k, shape in one.items()}
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


def head_tensors(head) -> tuple[dict[str, torch.Tensor], int]:
    """(the tensors a guard folder stores for `head`, K): a plain head's state dict (K = 1), or a
    fold ensemble's K heads as `heads.<i>.network.<k>.*` (views of the head's own tensors)."""
    states = head.head_states()
    if len(states) == 1:
        return states[0], 1
    return {f"heads.{i}.{k}": v for i, s in enumerate(states) for k, v in s.items()}, len(states)


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------- save

def build_config(*, base_model_id: str, revision: str | None, pooling_type: str,
                 selection: dict[int, np.ndarray], layer_weights: dict[int, float], layer_dims: list[int],
                 dropout_rates: list[float], max_length: int, decision_threshold: float,
                 extra: dict | None = None, head_ensemble: int = 1) -> dict:
    """The `siren_config.json` content (validated) for these inputs; layer_dims: the whole
    network's widths (K heads side by side for head_ensemble K > 1)."""
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
    config["siren"].pop("head_ensemble", None)
    if int(head_ensemble) > 1:
        config["siren"]["head_ensemble"] = int(head_ensemble)
    else:   # the format every earlier version wrote and read
        config["siren"]["format_version"] = 1
    validate_config(config, source="the guard being saved")
    return config


def save_guard(folder, *, base_model_id: str, revision: str | None, pooling_type: str,
               selection: dict[int, np.ndarray], layer_weights: dict[int, float],
               head_state: dict[str, torch.Tensor], layer_dims: list[int], dropout_rates: list[float],
               max_length: int, decision_threshold: float, extra: dict | None = None,
               head_ensemble: int = 1) -> Path:
    """Write `siren_config.json` + `siren.safetensors` into `folder`; returns the folder.

    selection: layer -> neuron indices (in feature order). layer_weights: layer -> weight
    (missing layers get 1.0). head_state: the stored tensors (`head_tensors(head)`: a head's
    `network.<k>.*`, or K heads' `heads.<i>.network.<k>.*` with head_ensemble K). layer_dims: the
    whole network's widths. A new folder appears whole (written under a temp name, then renamed);
    in an existing folder each file is replaced atomically (weights, then config), others kept.
    """
    config = build_config(base_model_id=base_model_id, revision=revision, pooling_type=pooling_type,
                          selection=selection, layer_weights=layer_weights, layer_dims=layer_dims,
                          dropout_rates=dropout_rates, max_length=max_length, decision_threshold=decision_threshold, extra=extra,
                          head_ensemble=head_ensemble)
    # No copies of a float32 CPU head: the file is streamed from the tensors themselves.
    tensors = {k: v.detach().to("cpu", torch.float32) for k, v in head_state.items()}
    _check_head_state(tensors, _layout_of(config), "the head state being saved")
    write_weights = lambda tmp: write_safetensors(tmp, tensors, metadata={"format": "pt"})  # noqa: E731
    return _write_folder(Path(folder), write_weights, _json_bytes(config))


def _write_folder(folder: Path, write_weights, config_bytes: bytes) -> Path:
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


def export_llm_siren(folder, out_dir) -> Path:
    """Write the guard in `folder` as a folder that `llm-siren` (`siren_guard`) loads: the same
    config without `siren.head_ensemble`, and a fold ensemble's K heads as the one dense MLP it
    computes (hidden layers block-diagonal, zeros included: larger, equal scores). Returns out_dir."""
    config = load_guard_config(folder)
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(folder).resolve():
        raise SirenError(f"--out_dir {out_dir} is the guard folder itself: export into another folder")
    head = build_head(config, load_head_state(folder, config))
    dense = {k: v.detach() for k, v in head.state_dict().items()}
    config = json.loads(json.dumps(config))
    config["siren"] = {k: v for k, v in (config.get("siren") or {}).items() if k != "head_ensemble"}
    config["siren"]["format_version"] = 1
    validate_config(config, source="the exported guard")
    write_weights = lambda tmp: write_safetensors(tmp, dense, metadata={"format": "pt"})  # noqa: E731
    return _write_folder(out_dir, write_weights, _json_bytes(config))


def folder_size(folder) -> dict[str, int]:
    """Bytes of the guard's files in `folder` (config, weights, best_model.pkl when present) and `total`."""
    names = (CONFIG_NAME, WEIGHTS_NAME, BEST_MODEL_NAME, "answer_head.safetensors", "categories.safetensors",
             "categories.json")  # the extra heads' files, when the guard has them
    sizes = {name: (Path(folder) / name).stat().st_size for name in names if (Path(folder) / name).is_file()}
    return {**sizes, "total": sum(sizes.values())}


def describe_size(sizes: dict[str, int]) -> str:
    """`folder_size`'s answer in words: "siren.safetensors 1.2 MB, ...; 1.3 MB in all"."""
    def mb(n: int) -> str:
        return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"
    return ", ".join(f"{name} {mb(n)}" for name, n in sizes.items() if name != "total") + f"; {mb(sizes['total'])} in all"


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
        if not state[k].is_floating_point():  # integer weights would fail deep inside a matmul
            raise SirenError(f"{source}: tensor {k} holds {str(state[k].dtype).removeprefix('torch.')} values; "
                             "the head's weights must be floating point (F32, F16, BF16 or F64): the file was "
                             "not written by SIREN, write it again with float tensors")
        if tuple(state[k].shape) != shape:
            raise SirenError(f"{source}: tensor {k} has shape {tuple(state[k].shape)}, the config implies {shape}")
        if not torch.isfinite(state[k]).all():
            raise SirenError(f"{source}: tensor {k} has non-finite values")


def _layout_of(config: dict) -> dict[str, tuple[int, ...]]:
    mlp = config["mlp"]
    return head_layout(mlp["input_dim"], mlp["layer_dims"], mlp["dropout_rates"], mlp.get("num_classes", 2),
                       ensemble=head_ensemble(config))


def load_head_state(folder_or_file, config: dict) -> dict[str, torch.Tensor]:
    """Read `siren.safetensors` (a folder or the file) and check it against the config's head."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise SirenError(f"{path} is missing: the guard folder has no head weights")
    try:
        state = read_safetensors(path)
    except (ValueError, OSError) as err:
        raise SirenError(f"{path} could not be read as safetensors ({err}): the file is corrupt") from err
    _check_head_state(state, _layout_of(config), str(path))
    return state


def build_head(config: dict, state: dict[str, torch.Tensor]):
    """An eval-mode `siren.mlp.MLPHead` for the config's head holding `state` (fp32, CPU): one
    MLP, or for `siren.head_ensemble` K the K heads' mean (`MLPHead.ensemble`, hidden layers
    computed block by block, no zero block in memory)."""
    from siren.mlp import MLPHead

    mlp = config["mlp"]
    k = head_ensemble(config)
    if k > 1:
        states = [{name.removeprefix(f"heads.{i}."): t for name, t in state.items() if name.startswith(f"heads.{i}.")}
                  for i in range(k)]
        head = MLPHead.ensemble(mlp["input_dim"], [int(d) // k for d in mlp["layer_dims"]],
                                list(mlp["dropout_rates"]), states, num_classes=mlp.get("num_classes", 2))
    else:
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
        neurons[int(NEURON_KEY.match(key).group(1))] = np.asarray(idx, dtype=np.int64)
    weights = {l: float(sm["layer_weights"].get(str(l), 1.0)) for l in layers}
    return layers, neurons, weights


# ---------------------------------------------------------------- best_model.pkl (data only)

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def best_model_payload(folder, *, model: str, base_model: dict, metrics: dict) -> dict:
    """The paper's `best_model.pkl` content for the guard saved in `folder`, built from its
    config, so the pickle and the guard cannot disagree (threshold included). The weights are
    not copied: `weights` names the folder's safetensors file (beside the pickle) and its sha256."""
    config = load_guard_config(folder)
    layers, neurons, weights = selection_from_config(config)
    path = Path(folder) / WEIGHTS_NAME
    return {
        "format": "siren-best-model/2",
        "model": model,
        "base_model": base_model,
        "pooling_type": config["siren_module"]["pooling_type"],
        "selected_layers": layers,
        "selected_neurons": {str(l): neurons[l] for l in layers},
        "layer_weights": {str(l): weights[l] for l in layers},
        "mlp": dict(config["mlp"]),
        "head_ensemble": head_ensemble(config),
        "weights": {"file": WEIGHTS_NAME, "sha256": _sha256(path), "bytes": path.stat().st_size},
        "threshold": float(config["inference"]["default_threshold"]),
        "max_length": int(config["inference"]["max_length"]),
        "metrics": metrics,
    }


def load_best_model(path) -> tuple[dict, torch.nn.Module]:
    """(payload, head) of a `best_model.pkl`: the head from the guard folder it sits in (its
    weights' sha256 checked), or from the pickle's own `state_dict` (files written before format 2)."""
    from siren.mlp import MLPHead

    path = Path(path)
    payload = load_best_model_pkl(path)
    mlp = payload["mlp"]
    if "state_dict" in payload:
        state = {k: torch.from_numpy(np.array(v)) for k, v in payload["state_dict"].items()}
        return payload, MLPHead.from_state(mlp["input_dim"], mlp["layer_dims"], mlp["dropout_rates"], state)
    weights = path.parent / payload["weights"]["file"]
    if not weights.is_file() or _sha256(weights) != payload["weights"]["sha256"]:
        raise SirenError(f"{path}: its weights {weights} are missing or were changed (sha256 differs): keep "
                         "best_model.pkl in its guard folder, beside the siren.safetensors it was saved with")
    return payload, load_head(path.parent)
