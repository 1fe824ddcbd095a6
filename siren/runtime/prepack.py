"""Serving-time weight layouts: the backbone's Linear weights in oneDNN's blocked layout, and the head's.

On a CPU, a bfloat16 ``F.linear`` reorders its weight into oneDNN's blocked layout on every
call. For the short inputs of serving (one text: tens of tokens; a stream step: a few) that
reorder is a large share of the product: smollm2-135m's (59 x 576) @ (576 x 1536) took 214 us
plain and 131 us prepacked in a micro-benchmark. ``PackedLinear`` reorders once, at load.

Linears that read the same input tensor (a Llama/Qwen-style layer's q/k/v projections, and its
MLP's gate/up projections) are packed side by side as one weight (``SharedPackedLinear``): one
product per group instead of three or two, so a layer makes four weight products instead of
seven. Each output is still a sum over the same inputs, rounded to bfloat16 once.

The head: its input layer runs as a packed bfloat16 product (``PackedFloatLinear``: half the
bytes of a weight read whole for every text), and a fold ensemble's block-diagonal hidden layers
are computed block by block (``BlockDiagonalLinear``: the same sums without the zeros; the runtime
guard does this whatever the CPU).

Whole guards gain less than the products, since the rest of the forward is unchanged: on the
offline-six guard, all of it together 1.06-1.08x one text at a time against the plain forward in
three runs, of which sharing products 1.02-1.05x (``scripts/benchmarks/bench_latency.py --plain_too
--unshared_too``; ``experiments/offline_six_bench/run12_589892c/latency.json`` and ``latency_cc7431b_*.json``,
an Intel Xeon with AMX; prepacking alone was 1.02-1.05x in four earlier runs; 1.15-1.20x all
together on an AMD EPYC with AVX512-BF16, ``reports/offline_six_bench/latency*.json``). In
batches of 32 the hosts' noise is as large as the gains.

Numbers: the blocked kernel sums in another order than the plain one, so outputs agree to
bfloat16 rounding, not bit for bit (in those runs, guard scores moved by at most 6.7e-3 on single
texts and 9.5e-3 in batches). Training and evaluation never pack: the features a guard is trained
on come from the plain forward; only the runtime guard (``SirenGuard``, when it loads its own
backbone) packs, and ``prepack=False`` turns it off.
"""

from __future__ import annotations

import threading
from typing import Sequence

import torch
from torch import nn

from siren.errors import SirenError
from siren.mlp import BlockDiagonalLinear  # noqa: F401 (re-exported: a guard's split hidden layers)

__all__ = ["PackedLinear", "SharedPackedLinear", "PackedFloatLinear", "BlockDiagonalLinear", "packed_count",
           "prepack_linears", "prepack_head", "prepack_support", "diagonal_blocks", "split_block_diagonal"]

# The row count oneDNN is told to expect when it picks the blocked layout. Any count works for
# any input; this one was among the fastest for 1..500 rows in a sweep of 1/16/32/64/128/512.
_PACK_ROWS = 64

# Children of one module that read the same input tensor, by their attribute names in
# transformers' Llama/Qwen-style attention and MLP blocks (q, k, v; then gate, up).
_SHARED_INPUT_NAMES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """A bfloat16 (out, in) weight in oneDNN's blocked layout (read by ``_packed_product``)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_ROWS)


def _packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) bfloat16 times a packed (out, in) weight, plus bias -> (..., out) bfloat16."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """An ``nn.Linear`` (bfloat16, CPU) whose weight is kept in oneDNN's blocked layout.

    forward: (..., in_features) bfloat16 -> (..., out_features) bfloat16. ``weight`` and
    ``state_dict()`` give the plain (out_features, in_features) weight back (a copy), so
    weight comparisons and saving see the original Linear.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._packed = _pack(linear.weight)
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        return self._packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _packed_product(x, self._packed, self.bias)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _SharedInputProduct:
    """One packed product for Linears that read the same input (a group of ``SharedPackedLinear``).

    The first member called with an input x computes every member's output for x at once; the
    others then take theirs. A member called with another tensor than the pending one, or twice
    for one x, starts a new product, so any call order gives each member its own product of its
    input; the saving needs the members called on one tensor with no in-place change between the
    calls, as transformers' attention and MLP blocks do (``prepack_linears`` groups only those).
    Pending outputs are per thread, so threads sharing a model never take each other's.
    """

    def __init__(self, linears: Sequence[nn.Linear]):
        self.sizes = [lin.out_features for lin in linears]
        self.packed = _pack(torch.cat([lin.weight.detach() for lin in linears]))
        self.bias = None if linears[0].bias is None else torch.cat([lin.bias.detach() for lin in linears])
        self._pending = threading.local()   # .input: the tensor x; .outputs: {member: (..., out_i) view}

    def output(self, member: int, x: torch.Tensor) -> torch.Tensor:
        state = self._pending
        outputs = getattr(state, "outputs", None)
        if outputs is None or state.input is not x or member not in outputs:
            outputs = dict(enumerate(_packed_product(x, self.packed, self.bias).split(self.sizes, dim=-1)))
            state.input, state.outputs = x, outputs
        out = outputs.pop(member)
        if not outputs:          # every member served: drop the reference to x
            state.input = state.outputs = None
        return out

    def weight(self, member: int) -> torch.Tensor:
        start = sum(self.sizes[:member])
        return self.packed.to_dense()[start:start + self.sizes[member]].clone()


class SharedPackedLinear(nn.Module):
    """One of the Linears of a ``_SharedInputProduct``: the same forward, state_dict and
    ``weight`` as the ``nn.Linear`` it replaces (outputs to bfloat16 rounding; a last-dim view
    of the group's output, not a contiguous tensor)."""

    def __init__(self, linear: nn.Linear, product: _SharedInputProduct, member: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._product, self._member = product, member
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        return self._product.weight(self._member)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._product.output(self._member, x)

    _save_to_state_dict = PackedLinear._save_to_state_dict
    extra_repr = PackedLinear.extra_repr


def prepack_support(model: nn.Module) -> str | None:
    """None if ``model``'s Linear layers can be packed, else why not (one line)."""
    param = next(model.parameters(), None)
    if param is None:
        return "the model has no parameters"
    if param.device.type != "cpu":
        return f"the backbone is on {param.device}, not the CPU"
    if param.dtype != torch.bfloat16:
        return f"the backbone is {str(param.dtype).removeprefix('torch.')}, not bfloat16"
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return "this torch build or CPU has no oneDNN bfloat16 matmul"
    return None


def packed_count(model: nn.Module) -> int:
    """How many of ``model``'s Linear layers are packed, alone or sharing a product (0: a plain model)."""
    return sum(isinstance(m, (PackedLinear, SharedPackedLinear)) for m in model.modules())


def _is_bf16_linear(module) -> bool:
    return type(module) is nn.Linear and module.weight.dtype == torch.bfloat16


def _shared_input_groups(parent: nn.Module) -> list[list[str]]:
    """Names of ``parent``'s bfloat16 Linears that read one input: a transformers block's q/k/v or
    gate/up (same input width, all with a bias or none). Other classes (remote code) get none:
    their forward may call them differently."""
    if not type(parent).__module__.startswith("transformers.models."):
        return []
    groups = []
    for names in _SHARED_INPUT_NAMES:
        members = [getattr(parent, name, None) for name in names]
        if (all(_is_bf16_linear(m) for m in members) and len({m.in_features for m in members}) == 1
                and len({m.bias is None for m in members}) == 1):
            groups.append(list(names))
    return groups


@torch.no_grad()
def prepack_linears(model: nn.Module, share_inputs: bool = True) -> int:
    """Replace every bfloat16 ``nn.Linear`` inside ``model`` by a ``PackedLinear``, or, with
    ``share_inputs``, those of a group reading one input by ``SharedPackedLinear``s of one product;
    in place; returns how many Linears were replaced. A model that cannot be packed is a
    SirenError saying why."""
    why = prepack_support(model)
    if why is not None:
        raise SirenError(f"cannot prepack the backbone's weights: {why} (load it with prepack=False)")
    count = 0
    for parent in list(model.modules()):
        for names in _shared_input_groups(parent) if share_inputs else []:
            linears = [getattr(parent, name) for name in names]
            product = _SharedInputProduct(linears)
            for member, (name, lin) in enumerate(zip(names, linears)):
                setattr(parent, name, SharedPackedLinear(lin, product, member))
            count += len(names)
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if _is_bf16_linear(child)]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child))
    return count + len(swaps)


# ----------------------------------------------------------------- the head's block-diagonal layers

def diagonal_blocks(weight: torch.Tensor, most: int = 16) -> int:
    """The largest K in 2..most such that weight (out, in) is block-diagonal in K equal blocks
    (every entry outside the K diagonal (out/K, in/K) blocks is zero), else 1."""
    out_f, in_f = weight.shape
    for k in range(most, 1, -1):
        if out_f % k or in_f % k:
            continue
        r, c = out_f // k, in_f // k
        if not any(bool(weight[i * r:(i + 1) * r, j * c:(j + 1) * c].any())
                   for i in range(k) for j in range(k) if i != j):
            return k
    return 1


@torch.no_grad()
def split_block_diagonal(model: nn.Module) -> int:
    """Replace every block-diagonal ``nn.Linear`` inside ``model`` (a head) by a
    ``BlockDiagonalLinear``, in place; returns how many."""
    swaps = [(parent, name, child, diagonal_blocks(child.weight)) for parent in model.modules()
             for name, child in parent.named_children() if type(child) is nn.Linear]
    swaps = [s for s in swaps if s[3] > 1]
    for parent, name, child, k in swaps:
        setattr(parent, name, BlockDiagonalLinear.from_linear(child, k))
    return len(swaps)


class PackedFloatLinear(nn.Module):
    """A float32 ``nn.Linear`` run as a packed bfloat16 product: the head's input layer.

    Its weight (35 of the 48 M weights of the offline-six guard's head) is read whole for every
    text; in bfloat16 that is half the bytes, which is what a one-row product costs. forward:
    (n, in) float32 -> (n, out) float32: the input and weight rounded to bfloat16 (as the head's
    training under bf16 autocast does), the product summed in float32 and rounded to bfloat16,
    the float32 bias added. ``weight`` and ``state_dict()`` give the bfloat16-rounded weight as
    float32; the float32 original is not kept (that would double the layer's memory).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._packed = _pack(linear.weight.to(torch.bfloat16))
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        return self._packed.to_dense().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _packed_product(x.to(torch.bfloat16), self._packed, None).float()
        return y if self.bias is None else y + self.bias

    _save_to_state_dict = PackedLinear._save_to_state_dict
    extra_repr = PackedLinear.extra_repr


@torch.no_grad()
def prepack_head(head: nn.Module) -> bool:
    """Pack the head's input layer (the first plain float32 ``nn.Linear`` inside ``head``) as a
    ``PackedFloatLinear``, in place; False when there is none. Needs ``prepack_support``."""
    for parent in head.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear and child.weight.dtype == torch.float32:
                setattr(parent, name, PackedFloatLinear(child))
                return True
    return False
