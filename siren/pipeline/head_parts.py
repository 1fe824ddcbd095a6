"""The pieces ``head.fit_head`` trains with: seeded dropout, the bf16 first Linear that casts
into kept buffers, seeded initialisation, and standardised rows read batch by batch.

Training only (the runtime never imports this module); ``siren.pipeline.head`` imports from
here, never the other way round.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from siren.mlp import MLPHead

__all__: list[str] = []

class _SeededDropout(nn.Module):
    """Dropout drawing its masks from a given generator (training only; no state, so
    swapping it for nn.Dropout leaves the state dict unchanged)."""

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__()
        self.p, self.generator = float(p), generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self.generator) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


class _Bf16Linear(torch.autograd.Function):
    """``F.linear(x, w16, bias)`` in bf16 (x (b, k) bf16, w16 (w, k) bf16, bias (w,) fp32 ->
    (b, w) bf16) with autocast's numbers, and a faster weight gradient: autograd's own linear
    backward multiplies a transposed view of the output gradient, ``grad.t() @ x``, which
    oneDNN ran 2.4-2.5x slower than the same product of a contiguous copy at (1600 x 256) @
    (256 x 7220) (experiments/head_search_offline6/casts_microbench.log); the sums are the same (bit
    for bit over the 140 shapes of batch, width and inputs checked there, and tests/test_head.py
    compares whole fits)."""

    @staticmethod
    def forward(ctx, x, w16, bias):
        ctx.save_for_backward(x, w16)
        return nn.functional.linear(x, w16, bias.to(torch.bfloat16))

    @staticmethod
    def backward(ctx, grad):
        x, w16 = ctx.saved_tensors
        grad_x = grad.mm(w16) if ctx.needs_input_grad[0] else None
        grad_w = grad.t().contiguous().mm(x)
        # autocast's path: the bf16 bias's gradient (a bf16 sum over the batch), widened
        return grad_x, grad_w, grad.sum(0).to(torch.float32)


class _CastOnceLinear(nn.Module):
    """Stands in for the first nn.Linear (w, k) while a bf16 autocast fit trains it, holding
    the same weight and bias Parameters (so the state dict's keys and the optimizer's
    parameters are the Linear's), with the two weight casts written into tensors kept for the
    whole fit instead of new ones every step.

    The numbers are autocast's: in a training forward, ``_Bf16Linear`` reads a bf16 leaf
    holding the weight's bf16 rounding (what autocast's cast gives); after ``backward()``,
    ``to_master()`` widens that leaf's bf16 gradient into a kept fp32 tensor and hands it to
    ``weight.grad``, as autocast's cast backward would have handed over a new one. Outside
    training (validation) it is the plain Linear.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        # both overwritten before each read: the forward's copy, to_master's copy
        self.w16 = torch.empty(linear.weight.shape, dtype=torch.bfloat16).requires_grad_(True)
        self.grad32 = torch.empty(linear.weight.shape, dtype=linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return nn.functional.linear(x, self.weight, self.bias)
        with torch.no_grad():
            self.w16.copy_(self.weight)
        return _Bf16Linear.apply(x.to(torch.bfloat16), self.w16, self.bias)

    def to_master(self) -> None:
        if self.w16.grad is None:
            return
        with torch.no_grad():
            self.grad32.copy_(self.w16.grad)
        self.weight.grad = self.grad32
        self.w16.grad = None


def _seeded_init(model: MLPHead, gen: torch.Generator) -> None:
    """nn.Linear's default initialisation, drawn from ``gen``."""
    with torch.no_grad():
        for m in model.network:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5, generator=gen)
                bound = 1.0 / m.in_features ** 0.5
                nn.init.uniform_(m.bias, -bound, bound, generator=gen)


def _row_chunks(X: np.ndarray, rows: np.ndarray | None, chunk_rows: int):
    """X[rows] (all rows if None) as float32 row chunks, without copying X[rows] whole."""
    n = X.shape[0] if rows is None else len(rows)
    for s in range(0, n, chunk_rows):
        part = X[s:s + chunk_rows] if rows is None else X[rows[s:s + chunk_rows]]
        yield s, np.asarray(part, dtype=np.float32)


def _standard_stats(X: np.ndarray, chunk_rows: int = 1024, rows: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std (k,) float64 of X[rows] (n, k), accumulated over row chunks, so that
    no (n, k) float64 temporary is made (it would be twice the size of X)."""
    n = X.shape[0] if rows is None else len(rows)
    k = X.shape[1]
    mean = np.zeros(k, dtype=np.float64)
    for _, part in _row_chunks(X, rows, chunk_rows):
        mean += part.sum(axis=0, dtype=np.float64)
    mean /= n
    var = np.zeros(k, dtype=np.float64)
    for _, part in _row_chunks(X, rows, chunk_rows):
        var += np.square(part - mean).sum(axis=0)
    std = np.sqrt(var / n)
    std = np.where(std > 1e-8 * (1.0 + np.abs(mean)), std, 1.0)   # constant column: leave as is
    return mean, std


# Validation rows per product: the standardised rows of one product are (rows, inputs) bf16, so
# reading a fold's validation rows 1,024 at a time instead of all at once bounds that buffer
# (45 MB for 3,150 rows of 7,223 inputs) whatever the number of rows. Under bf16 autocast
# (oneDNN) row products of these sizes give the same logits bit for bit; in float32 (MKL picks
# its kernel by shape) they may differ in the last bit (tests/test_head.py).
_VAL_ROWS = 1024


class _Standardised:
    """Rows of X standardised when read: ``take(i)`` = (X[rows[i]] - mean) / std, computed in
    float32 and returned as ``dtype`` (b, k).

    Why not a standardised copy of the fold: that copy is (n, k), as large as the head's
    input itself, and it grew with the rows (the head search's peak memory did). Reading a
    batch's rows costs a gather and two float32 operations on (b, k) (about 2 ms for 256 rows
    of 7,220 neurons on 2 cores); the numbers are the ones the copy held (same float32 ops).
    X (N, k) float16/float32; rows (n,) int or None (all N rows); mean, std (k,)."""

    def __init__(self, X: np.ndarray, rows: np.ndarray | None, mean: np.ndarray, std: np.ndarray,
                 dtype: torch.dtype):
        self.X, self.rows, self.dtype = X, rows, dtype
        self.mean32 = torch.from_numpy(mean.astype(np.float32))
        self.std32 = torch.from_numpy(std.astype(np.float32))
        self.n = X.shape[0] if rows is None else len(rows)

    def __len__(self) -> int:
        return self.n

    def take(self, idx: np.ndarray | slice, piece_rows: int = 512) -> torch.Tensor:
        """idx: positions in 0..n-1 (an int array or a slice) -> (b, k) tensor of ``dtype``,
        its float32 temporaries at most ``piece_rows`` rows."""
        pick = np.arange(self.n)[idx] if isinstance(idx, slice) else np.asarray(idx)
        if self.rows is not None:
            pick = self.rows[pick]
        out = torch.empty((len(pick), self.X.shape[1]), dtype=self.dtype)
        for s in range(0, len(pick), piece_rows):
            # torch rather than numpy for the float16 -> float32 cast (numpy's is several times
            # slower); the same float32 subtraction and division either way
            part = torch.from_numpy(np.asarray(self.X[pick[s:s + piece_rows]])).to(torch.float32)
            part.sub_(self.mean32).div_(self.std32)
            out[s:s + len(part)] = part
        return out

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.X.shape[1]

    __getitem__ = take      # so `siren.mlp.logits_of` reads it as it reads a tensor
