"""scripts/bench_train.py: the head's input it saves, and --max_layer's column cut."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_train  # noqa: E402


def test_max_layer_keeps_exactly_the_columns_of_layers_up_to_it(tmp_path):
    full, cut = tmp_path / "full.npz", tmp_path / "cut.npz"
    assert bench_train.main(["--synthetic", "300", "6", "16", "--save_aggregated", str(full)]) == 0
    d = np.load(full)
    layer = d["layer"]
    assert layer.shape == (d["Z"].shape[1],) == d["colw"].shape
    assert np.all(np.diff(layer) >= 0)              # the runtime's order: layers ascending
    assert len(np.unique(layer)) >= 2                # the planted signal spans several layers
    max_layer = int(np.unique(layer)[0])             # keep the shallowest selected layer only
    assert bench_train.main(["--aggregated", str(full), "--max_layer", str(max_layer),
                             "--save_aggregated", str(cut)]) == 0
    c = np.load(cut)
    keep = layer <= max_layer
    assert 0 < keep.sum() < len(layer)
    np.testing.assert_array_equal(c["Z"], d["Z"][:, keep])
    np.testing.assert_array_equal(c["colw"], d["colw"][keep])
    np.testing.assert_array_equal(c["layer"], layer[keep])
    np.testing.assert_array_equal(c["y"], d["y"])
    np.testing.assert_array_equal(c["g"], d["g"])


def test_an_input_saved_without_layers_refuses_max_layer_and_saves_no_pickles(tmp_path):
    old, again = tmp_path / "old.npz", tmp_path / "again.npz"
    rng = np.random.default_rng(0)
    np.savez(old, Z=rng.standard_normal((20, 5)).astype(np.float16), y=np.arange(20) % 2, g=np.zeros(20, np.int64))
    with pytest.raises(SystemExit):
        bench_train.main(["--aggregated", str(old), "--max_layer", "1", "--save_aggregated", str(again)])
    assert bench_train.main(["--aggregated", str(old), "--save_aggregated", str(again)]) == 0
    d = np.load(again)                                # allow_pickle=False: every array is plain
    assert sorted(d.files) == ["Z", "g", "y"]
    np.testing.assert_array_equal(d["Z"], np.load(old)["Z"])
