"""Serving-time weight layouts (siren.runtime.prepack): same numbers to bf16 rounding (packing) or to
float summation order (block-diagonal head layers), same state_dict."""

import numpy as np
import pytest
import torch
from torch import nn

from siren.errors import SirenError
from siren.runtime.generation import shares_backbone
from siren.runtime.guard import SirenGuard
import siren.runtime.prepack as prepack_mod
from siren.artifact import save_guard
from siren.mlp import MLPHead
from siren.pipeline.head import ensemble_heads
from siren.runtime.prepack import (BlockDiagonalLinear, PackedFloatLinear, PackedLinear, SharedPackedLinear,
                                   diagonal_blocks, packed_count, prepack_head, prepack_linears, prepack_support,
                                   split_block_diagonal)
from test_guard import TEXTS, make_guard
from test_stream import PROMPT, RESPONSE, chunkings, stream_and_reference
from tiny_models import load_base

needs_onednn_bf16 = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="this torch build or CPU has no oneDNN bfloat16 matmul")


def bf16_linear(k, n, bias, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.mul_(4.0)
    return lin.requires_grad_(False)


@needs_onednn_bf16
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


@needs_onednn_bf16
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


@needs_onednn_bf16
def test_prepack_refuses_what_it_cannot_pack(tiny_llama_dir):
    fp32 = load_base(tiny_llama_dir)
    assert "float32, not bfloat16" in prepack_support(fp32)
    with pytest.raises(SirenError, match="cannot prepack.*float32.*prepack=False"):
        prepack_linears(fp32)
    assert prepack_support(fp32.to(torch.bfloat16)) is None


def guard_packed_count(guard) -> int:
    return packed_count(guard.backbone.model)


@needs_onednn_bf16
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


@needs_onednn_bf16
def test_packed_stream_equals_packed_score(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, pooling="mlp_mean", layers=(1, 3), max_length=64)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu", dtype="bfloat16", prepack=True)
    session, got, want = stream_and_reference(guard, PROMPT, chunkings(RESPONSE)["random"])
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    assert np.ptp(want) > 2e-3


def count_products(monkeypatch) -> list:
    """Every packed product from now on appends its output width to the returned list."""
    widths, real = [], prepack_mod._packed_product

    def counting(x, packed, bias):
        out = real(x, packed, bias)
        widths.append(out.shape[-1])
        return out

    monkeypatch.setattr(prepack_mod, "_packed_product", counting)
    return widths


@needs_onednn_bf16
def test_linears_reading_one_input_share_one_product(tiny_dir, monkeypatch):
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 9))
    plain = load_base(tiny_dir).to(torch.bfloat16)
    alone, shared = load_base(tiny_dir).to(torch.bfloat16), load_base(tiny_dir).to(torch.bfloat16)
    n_layers = plain.config.num_hidden_layers
    assert prepack_linears(alone, share_inputs=False) == prepack_linears(shared) == 7 * n_layers
    assert sum(isinstance(m, SharedPackedLinear) for m in shared.modules()) == 5 * n_layers  # q k v, gate up
    assert packed_count(shared) == 7 * n_layers
    assert list(shared.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(shared.state_dict()[k], v) for k, v in plain.state_dict().items())
    widths = count_products(monkeypatch)
    with torch.inference_mode():
        want, got_alone = plain(input_ids=ids).last_hidden_state, alone(input_ids=ids).last_hidden_state
        assert len(widths) == 7 * n_layers
        widths.clear()
        got = shared(input_ids=ids).last_hidden_state
    # one product per group: q|k|v, o, gate|up, down per layer
    cfg = plain.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * head_dim
    assert widths == [qkv, cfg.hidden_size, 2 * cfg.intermediate_size, cfg.hidden_size] * n_layers
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=2 ** -5, atol=scale * 2 ** -6)
    torch.testing.assert_close(got, got_alone, rtol=2 ** -5, atol=scale * 2 ** -6)


@needs_onednn_bf16
def test_shared_members_get_their_own_input_product():
    torch.manual_seed(0)
    linears = [bf16_linear(24, n, bias=True, seed=i) for i, n in enumerate((24, 8, 8))]
    product = prepack_mod._SharedInputProduct(linears)
    members = [SharedPackedLinear(lin, product, i) for i, lin in enumerate(linears)]
    x1, x2 = torch.randn(3, 24).to(torch.bfloat16), torch.randn(3, 24).to(torch.bfloat16)
    with torch.inference_mode():
        own = lambda i, x: PackedLinear(linears[i])(x)  # noqa: E731
        # any call order: a member called with another tensor, or twice for one, gets its own input's product
        for i, x in [(0, x1), (1, x2), (1, x2), (2, x1), (0, x1), (1, x1), (2, x1), (2, x2)]:
            assert torch.equal(members[i](x), own(i, x)), (i, x is x1)
    assert all(torch.equal(m.weight, lin.weight) for m, lin in zip(members, linears))


@needs_onednn_bf16
def test_only_transformers_blocks_share_products():
    class RemoteAttention(nn.Module):       # e.g. remote code: its forward may call q/k/v on other tensors
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = (bf16_linear(16, 16, False, seed=i) for i in range(3))

    model = nn.Sequential(RemoteAttention())
    assert prepack_linears(model) == 3
    assert packed_count(model) == 3 and not any(isinstance(m, SharedPackedLinear) for m in model.modules())


def ensemble_head(k=3, dims=(16, 8), input_dim=20, seed=0):
    """A fold ensemble as one dense MLP, block-diagonal zeros included: what guard folders written
    before format 2 hold, and what `export_llm_siren` writes."""
    torch.manual_seed(seed)
    heads = [MLPHead(input_dim, list(dims), [0.1, 0.0]) for _ in range(k)]
    dense = ensemble_heads(heads).state_dict()
    return MLPHead.from_state(input_dim, [k * d for d in dims], [0.1, 0.0], dense)


def test_diagonal_blocks_finds_the_fold_ensembles_blocks():
    head = ensemble_head(k=3)
    hidden = head.network[3].weight              # (24, 48): three 8 x 16 blocks
    assert diagonal_blocks(hidden) == 3
    assert diagonal_blocks(head.network[0].weight) == 1      # the stacked input layer is dense
    assert diagonal_blocks(torch.block_diag(*[torch.randn(4, 5)] * 4)) == 4
    broken = hidden.clone()
    broken[0, -1] = 1e-30                        # one non-zero outside the blocks
    assert diagonal_blocks(broken) == 1


def test_block_diagonal_layers_compute_the_same_head():
    head = ensemble_head(k=3)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    x = torch.randn(5, 20)
    with torch.inference_mode():
        want = head(x)
        assert split_block_diagonal(head) == 1
        assert isinstance(head.network[3], BlockDiagonalLinear) and head.network[3].k == 3
        assert split_block_diagonal(head) == 0      # nothing left to split
        got, one = head(x), head(x[:1])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(one, want[:1], rtol=1e-6, atol=1e-6)
    after = head.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


@needs_onednn_bf16
def test_packed_head_input_layer_agrees_to_bf16_rounding():
    head = ensemble_head(k=3, dims=(64, 8), input_dim=300)
    dense = MLPHead(300, [192, 24], [0.1, 0.0]).eval()
    dense.load_state_dict(head.state_dict())
    x = torch.randn(7, 300)
    with torch.inference_mode():
        want = torch.softmax(dense(x), -1)[:, 1]
        assert prepack_head(head)
        assert isinstance(head.network[0], PackedFloatLinear) and type(head.network[3]) is nn.Linear
        got = torch.softmax(head(x), -1)[:, 1]
        assert got.dtype == torch.float32
        rounded = torch.softmax(dense.network[3:](torch.relu(
            x.bfloat16().float() @ dense.network[0].weight.bfloat16().float().t() + dense.network[0].bias)), -1)[:, 1]
    assert float((want - 0.5).abs().max()) > 0.05     # scores spread: a meaningful comparison
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2)
    torch.testing.assert_close(got, rounded, rtol=0, atol=2e-3)   # = rounding the input and weight only
    assert torch.equal(head.network[0].weight, dense.network[0].weight.bfloat16().float())


def test_guard_computes_an_ensemble_head_block_by_block(tmp_path, tiny_llama_dir):
    head = ensemble_head(k=3, input_dim=15)
    rng = np.random.default_rng(0)
    selection = {l: rng.choice(32, size=5, replace=False) for l in (0, 2, 3)}
    save_guard(tmp_path / "g", base_model_id=str(tiny_llama_dir), revision=None, pooling_type="mlp_mean", selection=selection,
               layer_weights={l: 1.0 for l in selection}, head_state=head.state_dict(), layer_dims=[48, 24],
               dropout_rates=[0.1, 0.0], max_length=64, decision_threshold=0.5,
               extra={"backbone": "tiny", "num_layers": 4, "hidden_size": 32})
    guard = SirenGuard.from_pretrained(str(tmp_path / "g"), device="cpu", dtype="float32")
    assert isinstance(guard.head.network[3], BlockDiagonalLinear)
    z = np.random.default_rng(1).normal(size=(6, 15)).astype(np.float32)
    with torch.inference_mode():
        want = torch.softmax(head(torch.from_numpy(z)), -1)[:, 1].double().numpy()
    np.testing.assert_allclose(guard.proba_from_features(z), want, rtol=0, atol=1e-6)
