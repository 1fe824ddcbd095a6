"""Loading a local backbone folder tensor by tensor gives from_pretrained's weights."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModel

from siren.backbones import _load_local_weights, load_backbone


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_local_loader_equals_from_pretrained(tiny_dir, dtype):
    ours = _load_local_weights(tiny_dir, dtype)
    assert ours is not None                      # a plain safetensors folder takes our path
    ref = AutoModel.from_pretrained(tiny_dir, dtype=dtype)
    a, b = ours.state_dict(), ref.state_dict()
    assert set(a) == set(b)
    for k in b:
        assert a[k].dtype == dtype and torch.equal(a[k], b[k]), k
    x = torch.tensor([[3, 5, 7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=x).last_hidden_state, ref(input_ids=x).last_hidden_state,
                                   rtol=0, atol=0)
    assert type(load_backbone(str(tiny_dir), device="cpu", dtype=str(dtype).removeprefix("torch.")).model) is type(ref)


def test_folder_the_loader_cannot_read_falls_back(tiny_llama_dir, tmp_path):
    """A checkpoint missing a weight the model has, or no safetensors at all: None, so
    load_backbone uses from_pretrained (which reports what is wrong in its own words)."""
    folder = tmp_path / "no-safetensors"
    shutil.copytree(tiny_llama_dir, folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    assert _load_local_weights(folder, torch.float32) is None
