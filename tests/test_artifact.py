import json
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from siren.artifact import (CONFIG_NAME, WEIGHTS_NAME, best_model_payload, build_head, head_layout,
                            load_best_model, load_best_model_pkl, load_guard_config, load_head_state, read_safetensors,
                            save_best_model_pkl, save_guard, selection_from_config, set_default_threshold)
from siren.errors import SirenError


def _sequential(input_dim, layer_dims, dropout_rates, seed=0):
    torch.manual_seed(seed)
    layers, prev = [], input_dim
    for dim, p in zip(layer_dims, dropout_rates):
        layers += [nn.Linear(prev, dim), nn.ReLU()] + ([nn.Dropout(p)] if p > 0 else [])
        prev = dim
    layers.append(nn.Linear(prev, 2))
    return nn.Sequential(*layers)


SELECTION = {3: np.array([7, 1, 30]), 0: np.array([5, 2])}
DIMS, RATES = [8, 4], [0.2, 0.0]


def _state(seed=0, input_dim=5):
    return {f"network.{k}": v for k, v in _sequential(input_dim, DIMS, RATES, seed).state_dict().items()}


def _save(folder, **over):
    kw = dict(base_model_id="/models/tiny", revision=None, pooling_type="residual_mean", selection=SELECTION,
              layer_weights={0: 0.5, 3: 2.0}, head_state=_state(), layer_dims=DIMS, dropout_rates=RATES,
              max_length=128, decision_threshold=0.4, extra={"backbone": "tiny", "num_layers": 4, "hidden_size": 32})
    kw.update(over)
    return save_guard(folder, **kw)


def test_round_trip(tmp_path):
    folder = _save(tmp_path / "guard")
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    config = load_guard_config(folder)
    sm = config["siren_module"]
    assert config["task"] == "content"
    assert config["base_model"] == {"model_id": "/models/tiny", "revision": None}
    assert sm["selected_layers"] == [0, 3]
    assert sm["layer_weights"] == {"0": 0.5, "3": 2.0}
    assert sm["selected_neurons_dict"] == {"layer0_residual_mean": [5, 2], "layer3_residual_mean": [7, 1, 30]}
    assert config["mlp"] == {"input_dim": 5, "layer_dims": [8, 4], "dropout_rates": [0.2, 0.0], "num_classes": 2}
    assert config["inference"] == {"max_length": 128, "default_threshold": 0.4}
    assert config["siren"]["hidden_size"] == 32 and config["siren"]["format_version"] == 1
    layers, neurons, weights = selection_from_config(config)
    assert layers == [0, 3] and neurons[3].tolist() == [7, 1, 30] and weights == {0: 0.5, 3: 2.0}
    state = load_head_state(folder, config)
    for k, v in _state().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    # The layout follows the Dropout slots: Linear 0, ReLU 1, Dropout 2, Linear 3, ReLU 4, Linear 5.
    assert set(head_layout(5, DIMS, RATES)) == {f"network.{k}.{w}" for k in (0, 3, 5) for w in ("weight", "bias")}

    set_default_threshold(folder, 0.7)
    assert load_guard_config(folder)["inference"]["default_threshold"] == 0.7
    # Saving over an existing folder replaces the two files and keeps others.
    (folder / "notes.txt").write_text("x")
    _save(folder, decision_threshold=0.3)
    assert load_guard_config(folder)["inference"]["default_threshold"] == 0.3
    assert (folder / "notes.txt").read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_missing_layer_weight_defaults_to_one(tmp_path):
    config = load_guard_config(_save(tmp_path / "g", layer_weights={3: 2.0}))
    assert config["siren_module"]["layer_weights"] == {"0": 1.0, "3": 2.0}


def test_byte_deterministic(tmp_path):
    a, b = _save(tmp_path / "a"), _save(tmp_path / "b")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    c = _save(tmp_path / "c", head_state=_state(seed=1))
    assert (a / WEIGHTS_NAME).read_bytes() != (c / WEIGHTS_NAME).read_bytes()


def test_save_rejects_bad_inputs(tmp_path):
    with pytest.raises(SirenError, match="pooling"):
        _save(tmp_path / "x", pooling_type="max")
    bad = _state()
    bad["network.0.weight"] = torch.zeros(8, 6)
    with pytest.raises(SirenError, match=r"network\.0\.weight"):
        _save(tmp_path / "y", head_state=bad)
    with pytest.raises(SirenError, match="layer_weights"):
        _save(tmp_path / "z", layer_weights={9: 1.0})
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _edit(folder, fn):
    path = folder / CONFIG_NAME
    config = json.loads(path.read_text())
    fn(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("edit, pattern", [
    (lambda c: c["siren_module"].__setitem__("pooling_type", "max_mean"), "pooling_type 'max_mean'"),
    (lambda c: c["mlp"].__setitem__("input_dim", 6), "input_dim is 6 but .* 5 neurons"),
    (lambda c: c["siren_module"].pop("selected_neurons_dict"), "missing key siren_module.selected_neurons_dict"),
    (lambda c: c.pop("inference"), "missing key inference"),
    (lambda c: c["siren_module"]["selected_neurons_dict"].pop("layer3_residual_mean"), "no entry for selected layers"),
    (lambda c: c["siren_module"]["selected_neurons_dict"].__setitem__(
        "layer0_residual_mean", [5, 5]), "duplicate"),
    (lambda c: c.__setitem__("task", "trajectory"), "task is 'trajectory'"),
    (lambda c: c["mlp"].__setitem__("dropout_rates", [0.2]), "dropout_rates"),
])
def test_invalid_config_names_file_and_key(tmp_path, edit, pattern):
    folder = _save(tmp_path / "g")
    _edit(folder, edit)
    with pytest.raises(SirenError, match=pattern) as err:
        load_guard_config(folder)
    assert CONFIG_NAME in str(err.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(SirenError, match="does not exist"):
        load_guard_config(tmp_path / "nope")
    folder = _save(tmp_path / "g")
    config = load_guard_config(folder)
    (folder / WEIGHTS_NAME).write_bytes(b"\x00garbage")
    with pytest.raises(SirenError, match=WEIGHTS_NAME + ".*corrupt"):
        load_head_state(folder, config)
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(SirenError, match=WEIGHTS_NAME + ".*missing"):
        load_head_state(folder, config)
    (folder / CONFIG_NAME).write_text('{"task": "content", ')
    with pytest.raises(SirenError, match=CONFIG_NAME + ".*not valid JSON"):
        load_guard_config(folder)
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(SirenError, match=CONFIG_NAME + ".*missing"):
        load_guard_config(folder)


def test_read_safetensors_equals_the_library_reader(tmp_path):
    """Every dtype a tensor file of ours may hold, empty and 0-d tensors included, in several
    tensors whose file order differs from their name order."""
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    tensors = {"z_f32": torch.randn(3, 4, generator=g), "a_bf16": torch.randn(5, generator=g).bfloat16(),
               "f16": torch.randn(2, 2, generator=g).half(), "f64": torch.randn(3, generator=g).double(),
               "i64": torch.arange(6).reshape(2, 3), "i8": torch.tensor([-3, 4], dtype=torch.int8),
               "u8": torch.tensor([250], dtype=torch.uint8), "b": torch.tensor([True, False, True]),
               "empty": torch.zeros(0, 5), "scalar": torch.tensor(2.5)}
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    got, ref = read_safetensors(path), load_file(str(path))
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k], ref[k]) and torch.equal(got[k], v), k
    got["z_f32"] += 1                         # tensors of their own: writable, not a view of the file
    assert torch.equal(read_safetensors(path)["z_f32"], tensors["z_f32"])


def _header_file(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


@pytest.mark.parametrize("header, data, pattern", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "cover 8 of the 4 data bytes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "cover 8 of the 12 data bytes"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12 bytes, its offsets span 8"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "starts at byte 4 of the data, expected 0"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "starts at byte 4 of the data, expected 8"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "no valid dtype"),
    ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "no valid dtype"),
    ([1, 2], b"", "not a JSON object"),
])
def test_read_safetensors_names_what_is_wrong(tmp_path, header, data, pattern):
    path = tmp_path / "bad.safetensors"
    _header_file(path, header, data)
    with pytest.raises(ValueError, match=pattern):
        read_safetensors(path)


def test_read_safetensors_bad_header_size(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="header size 1000000 does not fit in the file's 10 bytes"):
        read_safetensors(path)
    path.write_bytes(b"\x02\0\0")
    with pytest.raises(ValueError, match="shorter than the 8-byte header size"):
        read_safetensors(path)
    path.write_bytes((2).to_bytes(8, "little") + b"\xff{")
    with pytest.raises(ValueError, match="not JSON"):
        read_safetensors(path)


def test_build_head_holds_the_state_tensors_themselves(tmp_path):
    """build_head makes no second copy of the weights (nor a random initialisation)."""
    folder = _save(tmp_path / "g")
    config = load_guard_config(folder)
    state = load_head_state(folder, config)
    head = build_head(config, state)
    params = dict(head.named_parameters())
    assert sorted(params) == sorted(state)
    for k, v in state.items():
        assert params[k].data_ptr() == v.data_ptr(), k
    assert not head.training and not any(p.requires_grad for p in params.values())
    bad = dict(state)
    bad["network.0.weight"] = torch.zeros(8, 4)
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_head(config, bad)


def test_best_model_pkl_references_the_folders_weights(tmp_path):
    """best_model.pkl holds no second copy of the weights: it names the folder's safetensors file
    (sha256) and load_best_model gives the head back from it; a changed weights file is refused."""
    folder = _save(tmp_path / "g", head_state=_state(seed=3))
    payload = best_model_payload(folder, model="tiny", base_model={"model_id": "/models/tiny"}, metrics={"cv_f1": 0.5})
    assert "state_dict" not in payload and payload["weights"]["file"] == WEIGHTS_NAME
    save_best_model_pkl(folder / "best_model.pkl", payload)
    assert (folder / "best_model.pkl").stat().st_size < 2000
    got, head = load_best_model(folder / "best_model.pkl")
    assert got["threshold"] == 0.4 and got["head_ensemble"] == 1
    for k, v in _state(seed=3).items():
        torch.testing.assert_close(head.state_dict()[k], v, rtol=0, atol=0)
    _save(folder, head_state=_state(seed=4))
    with pytest.raises(SirenError, match="sha256 differs"):
        load_best_model(folder / "best_model.pkl")


def test_best_model_pkl_of_earlier_versions_loads(tmp_path):
    """A best_model.pkl with its own state_dict (format 1) still gives its head."""
    state = _state(seed=5)
    payload = {"format": "siren-best-model/1", "mlp": {"input_dim": 5, "layer_dims": DIMS, "dropout_rates": RATES,
                                                       "num_classes": 2},
               "state_dict": {k: v.numpy() for k, v in state.items()}, "threshold": 0.5}
    save_best_model_pkl(tmp_path / "best_model.pkl", payload)
    _, head = load_best_model(tmp_path / "best_model.pkl")
    for k, v in state.items():
        torch.testing.assert_close(head.state_dict()[k], v, rtol=0, atol=0)


def test_weights_not_matching_config(tmp_path):
    folder = _save(tmp_path / "g")
    other = _save(tmp_path / "h", selection={0: np.array([1, 2, 3, 4])}, layer_weights={0: 1.0},
                  head_state=_state(input_dim=4))
    config = load_guard_config(other)
    os.replace(folder / WEIGHTS_NAME, other / WEIGHTS_NAME)  # 5 inputs; config says 4
    with pytest.raises(SirenError, match=r"network\.0\.weight has shape \(8, 5\), the config implies \(8, 4\)"):
        load_head_state(other, config)


# ---------------------------------------------------------------- best_model.pkl

class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_best_model_pkl_round_trip(tmp_path):
    payload = {"selection": {3: np.array([7, 1, 30]), 0: np.array([5, 2])}, "weights": [0.5, 2.0],
               "params": {"lr": 1e-3, "layers": (8, 4), "name": "x", "flag": True, "none": None},
               "matrix": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32),
               "scalar": np.float64(0.25), "count": np.int64(7), "strings": np.array(["a", "bc"])}
    path = tmp_path / "sub" / "best_model.pkl"
    save_best_model_pkl(path, payload)
    got = load_best_model_pkl(path)
    assert got["selection"][3].tolist() == [7, 1, 30] and got["params"]["layers"] == (8, 4)
    np.testing.assert_array_equal(got["matrix"], payload["matrix"])
    assert got["matrix"].dtype == np.float32 and got["scalar"] == 0.25 and got["count"] == 7
    assert got["strings"].tolist() == ["a", "bc"]
    # Other protocols the paper's code may have used load too.
    for proto in (2, 3, 5):
        path.write_bytes(pickle.dumps(payload, protocol=proto))
        np.testing.assert_array_equal(load_best_model_pkl(path)["matrix"], payload["matrix"])


def test_best_model_pkl_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "best_model.pkl"
    path.write_bytes(pickle.dumps({"model": _Exploit(marker)}))
    with pytest.raises(SirenError, match="refusing to load (posix|os)\\.system"):
        load_best_model_pkl(path)
    assert not marker.exists()
    # A pickled object of an arbitrary class (e.g. a torch module) is refused too, as is saving one.
    path.write_bytes(pickle.dumps({"head": nn.Linear(2, 2)}))
    with pytest.raises(SirenError, match="refusing"):
        load_best_model_pkl(path)
    with pytest.raises(SirenError, match="not plain data"):
        save_best_model_pkl(tmp_path / "x.pkl", {"head": nn.Linear(2, 2)})
    with pytest.raises(SirenError, match="dtype object"):
        save_best_model_pkl(tmp_path / "x.pkl", {"a": np.array([{"x": 1}], dtype=object)})
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(SirenError, match="corrupt"):
        load_best_model_pkl(path)
    assert not marker.exists()
