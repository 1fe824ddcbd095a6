"""The guard's feature extractor: token ids -> the `(input_dim,)` vectors its heads read.

    extractor = guard.extractor
    extractor.features(texts)                          # (n, input_dim) over each whole text
    extractor.pair_features(ids, spans)                # (b, S, input_dim) over token spans, one forward
    extractor.select(pooled)                           # (..., L, d) per-layer vectors -> (..., input_dim)

For each selected layer (ascending) the pooled vector (`siren.features.LayerFeatures`, the same
function training used) in fp32, indexed by that layer's neurons in the order listed in the
guard's `selected_neurons_dict`, times the layer's weight, concatenated. The streaming session and
the generation hooks pool the same selected neurons token by token: they read `modules()`,
`index`, `bounds` and `scale` from here, so the three paths cannot drift apart.

Plain torch over `siren.features`: it imports nothing from the rest of the runtime.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from siren.features import LayerFeatures, decoder_parts, feature_modules, length_batches


class GuardFeatures:
    """Selected neurons of selected layers, weighted: what a guard's heads read."""

    def __init__(self, model, tokenizer, *, pooling_type: str, layers: Sequence[int],
                 neurons: dict[int, np.ndarray], weights: dict[int, float], max_length: int):
        self.pooling_type = pooling_type
        self.layers = sorted(int(l) for l in layers)
        self.max_length = int(max_length)
        self.layer_features = LayerFeatures(model, tokenizer, pooling_types=(pooling_type,), layers=self.layers,
                                            max_length=self.max_length)
        self.tokenizer = tokenizer
        self.model = model
        self.device = self.layer_features.device
        # Per selected layer (ascending): neuron indices (listed order) and weight.
        self.index: list[torch.Tensor] = [torch.as_tensor(neurons[l], dtype=torch.long) for l in self.layers]
        self.weights: list[float] = [float(weights[l]) for l in self.layers]
        self.input_dim = sum(len(idx) for idx in self.index)
        # Feature columns of each selected layer: [lo, hi) in the heads' input.
        ends = np.cumsum([len(idx) for idx in self.index]).tolist()
        self.bounds: list[tuple[int, int]] = list(zip([0, *ends[:-1]], ends))
        # Per feature column: its layer's weight, so features = mean of selected neurons * scale.
        self.scale = torch.cat([torch.full((len(idx),), w, dtype=torch.float32)
                                for idx, w in zip(self.index, self.weights)])

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Normalised, right-truncated at max_length (the runtime's text rules)."""
        return self.layer_features.tokenize(texts)

    def modules(self) -> list[tuple[str, int, torch.nn.Module]]:
        """(pooling type, layer, module whose output is that layer's vector) of `model`, in firing order."""
        return self.layer_features._modules()

    def modules_of(self, model) -> list[tuple[str, int, torch.nn.Module]]:
        """The same modules in another model of the same architecture (e.g. the generating one)."""
        layers, norm = decoder_parts(model)
        return feature_modules(layers, norm, (self.pooling_type,), self.layers)

    def select(self, pooled: torch.Tensor) -> torch.Tensor:
        """(..., len(layers), d) per-layer vectors -> (..., input_dim) weighted selected neurons."""
        parts = [pooled[..., i, :].index_select(-1, idx) * w
                 for i, (idx, w) in enumerate(zip(self.index, self.weights))]
        return torch.cat(parts, dim=-1)

    @torch.inference_mode()
    def __call__(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """Token id lists -> (b, input_dim) over each whole row (fp32, CPU)."""
        return self.select(self.layer_features(batch)[self.pooling_type])

    @torch.inference_mode()
    def span_features(self, batch: Sequence[Sequence[int]], spans: Sequence[Sequence[tuple[int, int]]],
                      whole: bool = False) -> torch.Tensor:
        """(b, S, input_dim) over per-row token spans [lo, hi), one forward; NaN rows for empty spans.
        whole=True: (b, 1 + S, input_dim), first the whole row's features exactly as `__call__` gives them."""
        return self.select(self.layer_features.span_means(batch, spans, whole=whole)[self.pooling_type])

    @torch.inference_mode()
    def features(self, texts: Sequence[str], *, batch_size: int, batch_tokens: int) -> np.ndarray:
        """(n, input_dim) float32 over each whole text, length-bucketed, in input order
        (the guard resolves the batching: `SirenGuard.batching`)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.input_dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenize(texts)
        for idx in length_batches([len(x) for x in ids], batch_tokens, max_batch_size=max(1, int(batch_size)),
                                  fill=False):
            out[idx] = self([ids[i] for i in idx]).numpy()
        return out
