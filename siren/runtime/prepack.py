"""Serving-time weight prepacking: the backbone's Linear weights in oneDNN's blocked layout.

On a CPU, a bfloat16 ``F.linear`` reorders its weight into oneDNN's blocked layout on every
call. For the short inputs of serving (one text: tens of tokens; a stream step: a few) that
reorder is a large share of the product: smollm2-135m's (59 x 576) @ (576 x 1536) took 214 us
plain and 131 us prepacked in a micro-benchmark. ``PackedLinear`` reorders once, at load.
Whole guards gain less, since the rest of the forward is unchanged: on the offline-six guard,
1.02-1.05x one text at a time in four runs, and 0.86-1.19x in batches of 32, where this
host's noise is as large as the gain (``scripts/bench_latency.py --plain_too``;
``reports/offline_six_bench/latency.json`` and the ``latency*.json`` files of its
``run10_fb4a0ff/``, ``run9_e836edf/`` and ``run8_c1eee8e/``).

Numbers: the blocked kernel sums in another order than the plain one, so outputs agree to
bfloat16 rounding, not bit for bit (in those runs, guard scores moved by at most 1.5e-3).
Training never packs: the features a guard is trained on come from the plain forward; only
the runtime guard (``SirenGuard``, when it loads its own backbone) packs, and
``prepack=False`` turns it off.
"""

from __future__ import annotations

import torch
from torch import nn

from siren.errors import SirenError

__all__ = ["PackedLinear", "packed_count", "prepack_linears", "prepack_support"]

# The row count oneDNN is told to expect when it picks the blocked layout. Any count works for
# any input; this one was among the fastest for 1..500 rows in a sweep of 1/16/32/64/128/512.
_PACK_ROWS = 64


class PackedLinear(nn.Module):
    """An ``nn.Linear`` (bfloat16, CPU) whose weight is kept in oneDNN's blocked layout.

    forward: (..., in_features) bfloat16 -> (..., out_features) bfloat16. ``weight`` and
    ``state_dict()`` give the plain (out_features, in_features) weight back (a copy), so
    weight comparisons and saving see the original Linear.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), _PACK_ROWS)
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        return self._packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self._packed, self.bias, "none", [], "")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


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
    """How many of ``model``'s Linear layers are PackedLinear (0: a plain model)."""
    return sum(isinstance(m, PackedLinear) for m in model.modules())


@torch.no_grad()
def prepack_linears(model: nn.Module) -> int:
    """Replace every bfloat16 ``nn.Linear`` inside ``model`` by a ``PackedLinear``, in place;
    returns how many. A model that cannot be packed is a SirenError saying why."""
    why = prepack_support(model)
    if why is not None:
        raise SirenError(f"cannot prepack the backbone's weights: {why} (load it with prepack=False)")
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child))
    return len(swaps)
