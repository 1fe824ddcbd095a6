"""Serving-time prepacking (siren.runtime.prepack): same numbers to bf16 rounding, same state_dict."""

import numpy as np
import pytest
import torch
from torch import nn

from siren.errors import SirenError
from siren.runtime.generation import shares_backbone
from siren.runtime.guard import SirenGuard
from siren.runtime.prepack import PackedLinear, packed_count, prepack_linears, prepack_support
from test_guard import TEXTS, make_guard
from test_stream import PROMPT, RESPONSE, chunkings, stream_and_reference
from tiny_models import load_base

pytestmark = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="this torch build or CPU has no oneDNN bfloat16 matmul")


def bf16_linear(k, n, bias, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.mul_(4.0)
    return lin.requires_grad_(False)


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_agrees_with_linear_to_bf16_rounding(bias):
    lin = bf16_linear(96, 160, bias)
    packed = PackedLinear(lin)
    torch.manual_seed(1)
    inputs = [torch.randn(1, 96), torch.randn(7, 96), torch.randn(2, 59, 96), torch.randn(300, 96),
              torch.randn(96, 5).t()]  # the last one not contiguous
    with torch.inference_mode():
        for x in inputs:
            x = x.to(torch.bfloat16)
            plain, got = lin(x), packed(x)
            assert got.shape == plain.shape and got.dtype == torch.bfloat16
            exact = x.double() @ lin.weight.double().t() + (lin.bias.double() if bias else 0)
            err_plain = (plain.double() - exact).abs().max().item()
            err_packed = (got.double() - exact).abs().max().item()
            # both are the exact product rounded to bf16 (8 bits): within a couple of units of the
            # output's last place, and no less accurate than the plain kernel
            scale = exact.abs().max().item()
            assert err_packed <= max(2 * err_plain, scale * 2 ** -8), (x.shape, err_plain, err_packed)
            torch.testing.assert_close(got, plain, rtol=2 ** -6, atol=scale * 2 ** -7)
    # The plain weight and bias come back, in state_dict order.
    assert torch.equal(packed.weight, lin.weight)
    sd, want = packed.state_dict(), lin.state_dict()
    assert list(sd) == list(want) and all(torch.equal(sd[k], want[k]) for k in want)


def test_prepack_linears_swaps_every_linear_and_keeps_the_state_dict(tiny_llama_dir):
    model = load_base(tiny_llama_dir).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert linears == 7 * model.config.num_hidden_layers   # q k v o gate up down
    assert prepack_linears(model) == linears
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert packed_count(model) == linears
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert prepack_linears(model) == 0  # packing twice is a no-op


def test_prepack_refuses_what_it_cannot_pack(tiny_llama_dir):
    fp32 = load_base(tiny_llama_dir)
    assert "float32, not bfloat16" in prepack_support(fp32)
    with pytest.raises(SirenError, match="cannot prepack.*float32.*prepack=False"):
        prepack_linears(fp32)
    assert prepack_support(fp32.to(torch.bfloat16)) is None


def guard_packed_count(guard) -> int:
    return packed_count(guard.backbone.model)


def test_guard_prepack_default_and_scores(tmp_path, tiny_dir, monkeypatch):
    folder, *_ = make_guard(tmp_path / "g", tiny_dir, pooling="mlp_mean")
    plain = SirenGuard.from_pretrained(str(folder), device="cpu", dtype="bfloat16", prepack=False)
    packed = SirenGuard.from_pretrained(str(folder), device="cpu", dtype="bfloat16", prepack=True)
    assert guard_packed_count(plain) == 0 and guard_packed_count(packed) == 28
    want = np.array([r.score for r in plain.score_batch(TEXTS)])
    assert np.ptp(want) > 0.02  # a meaningful comparison
    got_batch = np.array([r.score for r in packed.score_batch(TEXTS)])
    got_single = np.array([packed.score(t).score for t in TEXTS])
    np.testing.assert_allclose(got_batch, want, atol=1e-3, rtol=0)
    np.testing.assert_allclose(got_single, want, atol=1e-3, rtol=0)
    # A packed guard still finds its backbone in a user's model with the same weights.
    assert shares_backbone(packed, load_base(tiny_dir).to(torch.bfloat16))
    # Default: packed only in bf16 on a CPU with native bf16 (the tests report none).
    assert guard_packed_count(SirenGuard.from_pretrained(str(folder), device="cpu", dtype="bfloat16")) == 0
    assert guard_packed_count(SirenGuard.from_pretrained(str(folder), device="cpu", dtype="float32")) == 0
    monkeypatch.setenv("SIREN_CPU_FLAGS", "amx_bf16")
    assert guard_packed_count(SirenGuard.from_pretrained(str(folder), device="cpu", dtype="bfloat16")) == 28
    assert guard_packed_count(SirenGuard.from_pretrained(str(folder), device="cpu", dtype="float32")) == 0
    with pytest.raises(SirenError, match="cannot prepack.*float32"):
        SirenGuard.from_pretrained(str(folder), device="cpu", dtype="float32", prepack=True)
    # A backbone passed in is packed only when asked.
    reused = SirenGuard.from_pretrained(str(folder), backbone=plain.backbone)
    assert guard_packed_count(reused) == 0
    assert guard_packed_count(SirenGuard.from_pretrained(str(folder), backbone=plain.backbone, prepack=True)) == 28


def test_packed_stream_equals_packed_score(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, pooling="mlp_mean", layers=(1, 3), max_length=64)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu", dtype="bfloat16", prepack=True)
    session, got, want = stream_and_reference(guard, PROMPT, chunkings(RESPONSE)["random"])
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    assert np.ptp(want) > 2e-3
