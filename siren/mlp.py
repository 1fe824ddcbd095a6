"""The SIREN head's network and its inference: shared by training (``siren.pipeline.head``)
and serving (``siren.runtime``), so it imports no training code.

Layout (fixed by the external runtime ``siren_guard``, which loads the state dict strictly):
``network = Sequential(Linear, ReLU, [Dropout if p > 0]) * n_hidden, Linear(prev, 2)``, so
the keys are ``network.<k>.weight`` / ``network.<k>.bias`` with k counting every module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["MLPHead", "BlockDiagonalLinear", "logits_of", "predict_proba_head"]


class BlockDiagonalLinear(nn.Module):
    """An ``nn.Linear`` whose weight is block-diagonal in K equal blocks, computed block by block.

    A fold ensemble's head (``MLPHead.ensemble``) keeps the runtime's one-MLP layout, so its
    hidden Linears after the first are block-diagonal: K - 1 of every K weights would be zeros
    that a dense product reads and multiplies. This holds only the K blocks. forward: (n, in) ->
    (n, out), the same sums without the zero terms (equal up to float summation order).
    ``weight`` and ``state_dict()`` give the dense weight back (the `llm-siren` layout).
    """

    def __init__(self, blocks: torch.Tensor, bias: torch.Tensor | None):
        """blocks (K, in/K, out/K): block i transposed, so that a batched product maps
        (K, n, in/K) to (K, n, out/K). bias (out,) or None."""
        super().__init__()
        self.k = int(blocks.shape[0])
        self.in_features, self.out_features = self.k * int(blocks.shape[1]), self.k * int(blocks.shape[2])
        self._blocks = blocks
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, k: int) -> "BlockDiagonalLinear":
        """From a dense block-diagonal Linear (K equal blocks; off-diagonal blocks are dropped)."""
        r, c = linear.out_features // k, linear.in_features // k
        w = linear.weight.detach()
        blocks = torch.stack([w[i * r:(i + 1) * r, i * c:(i + 1) * c].t() for i in range(k)]).contiguous()
        return cls(blocks, linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        return torch.block_diag(*self._blocks.transpose(1, 2))

    def block(self, i: int) -> torch.Tensor:
        """Block i as an (out/K, in/K) weight (a view)."""
        return self._blocks[i].t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        parts = torch.bmm(x.reshape(n, self.k, -1).transpose(0, 1), self._blocks)   # (K, n, out/K)
        y = parts.transpose(0, 1).reshape(n, self.out_features)
        return y if self.bias is None else y + self.bias

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, blocks={self.k}"


class MLPHead(nn.Module):
    """MLP over the selected neurons: input (batch, input_dim) -> logits (batch, num_classes)."""

    def __init__(self, input_dim: int, layer_dims: list[int], dropout_rates: list[float],
                 num_classes: int = 2):
        super().__init__()
        if len(layer_dims) != len(dropout_rates):
            raise ValueError(f"layer_dims {layer_dims} and dropout_rates {dropout_rates} "
                             "must have the same length")
        mods: list[nn.Module] = []
        prev = int(input_dim)
        for width, p in zip(layer_dims, dropout_rates):
            mods += [nn.Linear(prev, int(width)), nn.ReLU()]
            if p > 0:
                mods.append(nn.Dropout(float(p)))
            prev = int(width)
        mods.append(nn.Linear(prev, num_classes))
        self.network = nn.Sequential(*mods)
        self.input_dim = int(input_dim)
        self.layer_dims = [int(w) for w in layer_dims]
        self.dropout_rates = [float(p) for p in dropout_rates]
        self.num_classes = num_classes

    @classmethod
    def from_state(cls, input_dim: int, layer_dims: list[int], dropout_rates: list[float],
                   state: dict[str, torch.Tensor], num_classes: int = 2) -> "MLPHead":
        """An eval-mode head whose parameters are `state`'s tensors themselves (keys and shapes
        checked strictly). Built on the meta device, so no random initialisation is computed and
        no weight is held twice (a fold-ensemble head can be hundreds of MB)."""
        with torch.device("meta"):
            head = cls(input_dim, layer_dims, dropout_rates, num_classes)
        head.load_state_dict(state, strict=True, assign=True)
        return head.eval()

    n_heads = 1   # an ensemble of K heads (``MLPHead.ensemble``) sets K

    @classmethod
    def ensemble(cls, input_dim: int, head_dims: list[int], dropout_rates: list[float],
                 states: list[dict[str, torch.Tensor]], num_classes: int = 2) -> "MLPHead":
        """An eval-mode head whose logits are the mean of K heads' logits; states: each head's
        ``network.<k>.*`` tensors (width ``head_dims``), e.g. the CV folds' heads of one configuration.

        The heads sit side by side in one network of width K * w per hidden layer: the first
        Linear stacks their rows, each later hidden Linear is a ``BlockDiagonalLinear`` (no head
        sees another's units, and no zero block is held), and the output Linear concatenates
        theirs scaled by 1/K with the mean bias: mean_k logits_k up to float rounding.
        ``state_dict()`` is the dense one-MLP layout; ``head_states()`` gives the K heads back."""
        if not states:
            raise ValueError("no heads to combine")
        k = len(states)
        keys = [name.removesuffix(".weight") for name in head_layout_keys(len(head_dims), dropout_rates)]
        dims = [k * int(w) for w in head_dims]
        with torch.device("meta"):
            head = cls(input_dim, dims, dropout_rates, num_classes)
        with torch.no_grad():
            for j, key in enumerate(keys):
                ws = [s[f"{key}.weight"].float() for s in states]
                bs = [s[f"{key}.bias"].float() for s in states]
                idx = key.removeprefix("network.")
                if j == 0:
                    layer = nn.Linear(1, 1, device="meta")
                    layer.weight, layer.bias = nn.Parameter(torch.cat(ws), False), nn.Parameter(torch.cat(bs), False)
                    layer.in_features, layer.out_features = int(input_dim), int(layer.weight.shape[0])
                elif j < len(keys) - 1:
                    blocks = torch.stack([w.t() for w in ws]).contiguous()
                    layer = BlockDiagonalLinear(blocks, nn.Parameter(torch.cat(bs), False))
                else:
                    layer = nn.Linear(1, 1, device="meta")
                    # the same operations as the dense ensemble always used, so scores stay identical
                    layer.weight = nn.Parameter(torch.cat(ws, dim=1) / k, False)
                    layer.bias = nn.Parameter(torch.stack(bs).mean(dim=0), False)
                    layer.in_features, layer.out_features = int(layer.weight.shape[1]), int(num_classes)
                head.network[int(idx)] = layer
        # the output layer's own tensors (2 x w each): 1/K and the mean cannot be undone exactly
        head._last = [(s[f"{keys[-1]}.weight"].float(), s[f"{keys[-1]}.bias"].float()) for s in states]
        head.n_heads = k
        return head.eval()

    def head_states(self) -> list[dict[str, torch.Tensor]]:
        """Each head's own ``network.<k>.*`` tensors (views where possible): one dict for a plain
        head, K for an ensemble. What a guard folder stores: each weight once, no zero block."""
        if self.n_heads == 1:
            return [{k: v.detach() for k, v in self.state_dict().items()}]
        k = self.n_heads
        keys = [name.removesuffix(".weight") for name in head_layout_keys(len(self.layer_dims), self.dropout_rates)]
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(k)]
        for j, key in enumerate(keys):
            layer = self.network[int(key.removeprefix("network."))]
            for i in range(k):
                if j == len(keys) - 1:
                    w, b = self._last[i]
                else:
                    r = layer.out_features // k
                    w = layer.weight.detach()[i * r:(i + 1) * r] if j == 0 else layer.block(i)
                    b = layer.bias.detach()[i * r:(i + 1) * r]
                out[i][f"{key}.weight"], out[i][f"{key}.bias"] = w, b
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)



def head_layout_keys(n_hidden: int, dropout_rates: list[float]) -> list[str]:
    """The ``network.<k>.weight`` names of a head's Linears, in order (n_hidden + 1 of them)."""
    names, k = [], 0
    for p in list(dropout_rates)[:n_hidden]:
        names.append(f"network.{k}.weight")
        k += 3 if p > 0 else 2  # Linear, ReLU, [Dropout]
    return names + [f"network.{k}.weight"]


@torch.no_grad()
def logits_of(model: nn.Module, X: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(X[s:s + chunk_rows]) for s in range(0, X.shape[0], chunk_rows)])
    model.train(was_training)
    return out


@torch.no_grad()
def predict_proba_head(model: nn.Module, X: np.ndarray, chunk_rows: int = 4096) -> np.ndarray:
    """X (n, k) raw aggregated features -> (n,) float32 P(harmful) = softmax(logits)[:, 1]."""
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
    if Xt.ndim == 1:
        Xt = Xt[None, :]
    logits = logits_of(model, Xt, chunk_rows)
    return torch.softmax(logits.float(), dim=1)[:, 1].numpy().astype(np.float32)
