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

__all__ = ["MLPHead", "logits_of", "predict_proba_head"]


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)



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
