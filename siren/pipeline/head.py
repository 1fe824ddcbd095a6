"""Training the SIREN classification head (the MLP defined in ``siren.mlp``).

Reads aggregated features (n, k) float32 (from ``select.aggregate``) and labels; writes
nothing to disk (``artifact.py`` saves ``model.state_dict()`` as safetensors). The runtime
rebuilds the head from ``siren.mlp`` and never imports this module.

Layout (fixed by the external runtime ``siren_guard``, which loads the state dict strictly):
``network = Sequential(Linear, ReLU, [Dropout if p > 0]) * n_hidden, Linear(prev, 2)``, so
the keys are ``network.<k>.weight`` / ``network.<k>.bias`` with k counting every module.

Training choices (``fit_head``):
- inputs are standardised with the training rows' mean/std, and at the end the transform
  is folded into the first Linear (W' = W / std, b' = b - W' @ mean): the returned model
  takes the raw aggregated features, exactly what the runtime feeds it;
- AdamW (weight decay 1e-4 on weights, none on biases); every random draw (weight
  initialisation, batch shuffling, dropout masks) comes from ``torch.Generator``s seeded
  from ``seed``, never from the global RNG (which is neither reseeded nor advanced). So the
  same seed gives a byte-identical state dict on CPU, also when several trials train in
  threads at once (Optuna n_jobs > 1);
- class-balanced cross-entropy (each class weighs n / (2 n_c)): the metric is macro-F1 and
  the runtime thresholds at 0.5, so the head must not drift toward the majority class on
  imbalanced datasets (e.g. toxic_chat, ~7% harmful);
- early stopping on the validation mean-over-datasets macro-F1 with ``patience`` epochs,
  restoring a deep copy of the best state (copied tensors, not references).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from torch import nn

from siren.config import command_defaults
from siren.metrics import mean_group_macro_f1
from siren.mlp import MLPHead, logits_of
from siren.pipeline.head_parts import (_VAL_ROWS, _CastOnceLinear, _row_chunks, _SeededDropout,  # noqa: F401
                                       _seeded_init, _standard_stats, _Standardised)

__all__ = ["fit_head", "fold_standardisation", "ensemble_heads", "split_ensemble", "BALANCES"]

# fit_head's loss weights (its ``balance``): training uses "label"
BALANCES = ("label", "dataset_label", "none")


def fold_standardisation(model: MLPHead, mean: np.ndarray, std: np.ndarray) -> None:
    """In place: make ``model(x)`` equal the old ``model((x - mean) / std)``. mean, std (k,)."""
    first = model.network[0]
    with torch.no_grad():
        m = torch.as_tensor(mean, dtype=torch.float64)
        s = torch.as_tensor(std, dtype=torch.float64)
        W = first.weight.double() / s[None, :]
        b = first.bias.double() - W @ m
        first.weight.copy_(W.float())
        first.bias.copy_(b.float())


def ensemble_heads(heads: list[MLPHead]) -> MLPHead:
    """One MLPHead whose logits are the mean of ``heads``' logits (same input_dim, widths,
    dropout rates and classes; e.g. the CV folds' heads of one configuration): see
    ``MLPHead.ensemble`` (side by side, block-diagonal hidden layers held as their blocks)."""
    if not heads:
        raise ValueError("no heads to combine")
    first = heads[0]
    for h in heads[1:]:
        if (h.input_dim, h.layer_dims, h.dropout_rates, h.num_classes) != (
                first.input_dim, first.layer_dims, first.dropout_rates, first.num_classes):
            raise ValueError("heads differ in input_dim, widths, dropout or classes: cannot combine")
    states = [{k: v.detach() for k, v in h.state_dict().items()} for h in heads]
    return MLPHead.ensemble(first.input_dim, first.layer_dims, first.dropout_rates, states, first.num_classes)


def split_ensemble(head: MLPHead, k: int) -> list[MLPHead]:
    """The K heads of an ``ensemble_heads`` head, in order (``MLPHead.head_states``: each head's
    own tensors, output bias included). Head i of a CV fold ensemble never trained on fold i, so
    it gives that fold's rows out-of-fold scores."""
    k = int(k)
    if k < 1 or head.n_heads != k:
        raise ValueError(f"a head of widths {head.layer_dims} ({head.n_heads} heads) is not an ensemble of {k} heads")
    widths = [d // k for d in head.layer_dims]
    return [MLPHead.from_state(head.input_dim, widths, head.dropout_rates,
                               {name: t.float().clone() for name, t in state.items()}, head.num_classes)
            for state in head.head_states()]


# Training under bf16 autocast casts the first Linear's fp32 weight (width x k, the head's
# largest tensor) to bf16 in every forward, and its bf16 gradient back to fp32 in every
# backward, each into a freshly allocated tensor. At smollm2's 7,220 inputs and a 1,600-wide
# first layer that gradient is 46 MB: above glibc's mmap threshold, so each step mapped and
# page-faulted it anew, and the two casts took as long as the layer's matrix products.
_CAST_INTO_KEPT_BUFFERS = True


def fit_head(X: np.ndarray, y: np.ndarray, *, layer_dims: list[int], dropout_rates: list[float],
             lr: float, seed: int, max_epochs: int | None = None, batch_size: int | None = None,
             patience: int | None = None, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
             groups_val: np.ndarray | None = None,
             on_epoch: Callable[[int, float], None] | None = None,
             weight_decay: float = 1e-4, fused: bool = True, bf16: bool = False,
             column_scale: np.ndarray | None = None, rows: np.ndarray | None = None,
             val_rows: np.ndarray | None = None, groups: np.ndarray | None = None,
             balance: str = "label", stop_on: str = "f1", ema: float | None = None,
             input_dropout: float = 0.0) -> tuple[MLPHead, dict]:
    """Train the head. X (n, k) raw aggregated features, y (n,) {0,1}.

    ``balance``: "label": each class weighs the same in the loss (class weights n / (2 n_c));
    "dataset_label": each (dataset, label) cell of ``groups`` (n,) weighs the same (per-row
    weights n / (cells x n_cell)), so a small or skewed dataset counts as much as a large one,
    as in the score (the mean over datasets of macro-F1); "none": plain cross-entropy, every
    row weighs the same (the head learns the training mix's class priors).

    ``rows`` / ``val_rows`` (int arrays): train on X[rows], y[rows] and validate on
    X_val[val_rows], y_val[val_rows], groups_val[val_rows] (a CV fold of one array, as the head
    search does), standardised batch by batch as they are read: neither the caller nor fit_head
    copies X[rows] whole.

    With X_val/y_val (groups_val (m,) dataset index; one group if omitted): early stopping
    on validation mean_group_macro_f1 (``stop_on="f1"``) or on the validation cross-entropy,
    label-balanced with the training rows' class weights (``stop_on="loss"``: smoother than F1
    on small validation sets), best state restored, and ``on_epoch(epoch, f1)`` called after
    every epoch (it may raise, e.g. ``optuna.TrialPruned``; that propagates).
    Without validation: trains exactly ``max_epochs`` epochs. ``fused``: the single-kernel
    AdamW step (same update rule; on CPU it takes about a third of the time of the
    per-tensor loop, which was half of an epoch for a wide first layer). ``bf16``: forward
    and backward under CPU/CUDA autocast to bfloat16 (weights and optimizer state stay
    fp32); only worth it where the device has native bf16 matmuls (about 2x per epoch on
    AMX cores, several times slower on AVX2-only ones). ``column_scale`` (k,): multiply
    each standardised column by this (e.g. its layer's weight), so that standardising does
    not cancel a per-column scale of the raw features; folded into the first Linear too.
    ``ema`` (a decay in (0, 1), or None): validate, keep and return an exponential moving
    average of the weights over the steps instead of the last step's weights (measured on
    the offline-six rows: higher CV F1, lower held-out F1, so not a default).
    ``input_dropout`` (a probability p in [0, 1)): zero a share p of each training batch's
    standardised inputs (the rest scaled by 1 / (1 - p)); validation reads them whole
    (measured on the offline-six rows: lower held-out F1, so not a default).

    Returns (model in eval mode, taking raw features; history dict with ``val_f1`` list,
    ``train_loss`` list, ``best_epoch`` (1-based, number of epochs of the kept state),
    ``best_val_f1``, ``mean``, ``std``). max_epochs, batch_size (head_batch_size), patience
    None: configs/defaults.yaml's.
    """
    defaults = command_defaults("train")
    max_epochs = defaults["max_epochs"] if max_epochs is None else max_epochs
    batch_size = defaults["head_batch_size"] if batch_size is None else batch_size
    patience = defaults["patience"] if patience is None else patience
    data = _fit_data(X, y, rows=rows, X_val=X_val, y_val=y_val, groups_val=groups_val, val_rows=val_rows,
                     column_scale=column_scale, bf16=bf16, stop_on=stop_on)
    loss_fn, class_w = _fit_loss(balance, data.y, data.n, groups, data.rows)
    run = _fit_state(data.k, layer_dims, dropout_rates, int(seed), ema=ema, input_dropout=input_dropout,
                     bf16=bf16, lr=lr, weight_decay=weight_decay, fused=fused)
    history: dict = {"val_f1": [], "train_loss": [], "best_epoch": 0, "best_val_f1": None}
    best = _Best()
    for epoch in range(1, max_epochs + 1):
        history["train_loss"].append(_fit_epoch(run, data, loss_fn, batch_size, bf16, ema))
        if not data.has_val:
            continue
        f1, score = _validate(run.kept, data, stop_on, class_w, bf16)
        history["val_f1"].append(f1)
        best.update(score, f1, epoch, run.kept)
        if on_epoch is not None:
            on_epoch(epoch, f1)
        if best.stale >= patience:
            break
    return _fit_result(run, data, best, history, max_epochs)


def _fit_data(X, y, *, rows, X_val, y_val, groups_val, val_rows, column_scale, bf16: bool,
              stop_on: str) -> SimpleNamespace:
    """fit_head's rows: the training rows standardised when read (``Xt``, labels ``y``/``yt``, the
    ``mean``/``std`` folded in at the end) and, with validation, ``Xv``, ``yv``, ``gv``, ``yv_t``."""
    X = X if isinstance(X, np.ndarray) else np.asarray(X, dtype=np.float32)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        y = y[rows]
    n, k = (X.shape[0] if rows is None else len(rows)), X.shape[1]
    if n == 0:
        raise ValueError("no training rows")
    if stop_on not in ("f1", "loss"):
        raise ValueError(f"stop_on {stop_on!r}: use 'f1' or 'loss'")
    mean, std = _standard_stats(X, rows=rows)
    if column_scale is not None:
        scale = np.asarray(column_scale, dtype=np.float64).reshape(-1)
        if scale.shape != (k,) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError(f"column_scale must be {k} finite values > 0")
        std = std / scale              # (x - mean) / (std / s) == s * standardised x
    # Under bf16 autocast the first Linear casts its input to bf16 anyway, so handing it the
    # standardised rows in bf16 gives the same numbers.
    in_dtype = torch.bfloat16 if bf16 else torch.float32
    data = SimpleNamespace(X=X, y=y, rows=rows, n=n, k=k, mean=mean, std=std,
                           Xt=_Standardised(X, rows, mean, std, in_dtype), yt=torch.from_numpy(y),
                           has_val=X_val is not None and y_val is not None)
    if data.has_val:
        X_val = X_val if isinstance(X_val, np.ndarray) else np.asarray(X_val, dtype=np.float32)
        data.Xv = _Standardised(X_val, None if val_rows is None else np.asarray(val_rows, dtype=np.int64),
                                mean, std, in_dtype)
        yv = np.asarray(y_val).reshape(-1)
        gv = np.zeros(len(yv), np.int64) if groups_val is None else np.asarray(groups_val).reshape(-1)
        if val_rows is not None:
            yv, gv = yv[val_rows], gv[val_rows]
        data.yv, data.gv, data.yv_t = yv, gv, torch.from_numpy(np.asarray(yv, dtype=np.int64))
    return data


def _fit_loss(balance: str, y: np.ndarray, n: int, groups, rows) -> tuple[Callable, torch.Tensor]:
    """(loss_fn(logits (b, 2), target (b,), idx (b,) the batch's row numbers) -> weighted mean CE,
    class weights (2,)): each class weighs n / (2 n_c) (the "label" loss, and stop_on="loss")."""
    counts = np.bincount(y, minlength=2).astype(np.float64)
    class_w = torch.tensor(np.where(counts > 0, n / (2.0 * np.maximum(counts, 1)), 0.0), dtype=torch.float32)
    if balance == "label":
        class_ce = nn.CrossEntropyLoss(weight=class_w)

        def loss_fn(logits: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return class_ce(logits, target)
    elif balance == "none":
        plain_ce = nn.CrossEntropyLoss()

        def loss_fn(logits: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return plain_ce(logits, target)
    elif balance == "dataset_label":
        if groups is None:
            raise ValueError("balance='dataset_label' needs the training rows' groups")
        g = np.asarray(groups).reshape(-1).astype(np.int64)
        g = g[rows] if rows is not None else g
        _, cell, size = np.unique(g * 2 + y, return_inverse=True, return_counts=True)
        row_w = torch.tensor(n / (len(size) * size[cell]), dtype=torch.float32)     # (n,)
        ce = nn.CrossEntropyLoss(reduction="none")

        def loss_fn(logits: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            w = row_w[idx]
            return (ce(logits, target) * w).sum() / w.sum()   # CrossEntropyLoss(weight)'s mean, per row
    else:
        raise ValueError(f"balance {balance!r}: use one of {', '.join(BALANCES)}")
    return loss_fn, class_w


def _fit_state(k: int, layer_dims, dropout_rates, seed: int, *, ema, input_dropout, bf16: bool, lr: float,
               weight_decay: float, fused: bool) -> SimpleNamespace:
    """The seeded model, its EMA copy, generators, training-time module swaps and optimizer."""
    with torch.random.fork_rng(devices=[]):    # nn.Linear's own init would advance the global RNG
        model = MLPHead(k, layer_dims, dropout_rates)
    _seeded_init(model, torch.Generator().manual_seed(seed))
    run = SimpleNamespace(model=model, avg=None, steps=0)
    # ema: an exponential moving average of the weights over the steps; it is what is
    # validated, kept and returned (the raw weights only train). Warm-up: the decay at step t
    # is min(ema, (1 + t) / (10 + t)), so the initial weights fade quickly.
    if ema is not None:
        if not 0.0 < float(ema) < 1.0:
            raise ValueError(f"ema {ema!r}: a decay in (0, 1), or None")
        run.avg = copy.deepcopy(model).eval().requires_grad_(False)   # before the dropouts are swapped
        run.avg_params, run.raw_params = list(run.avg.parameters()), list(model.parameters())
    run.kept = model if run.avg is None else run.avg      # the weights that are validated and kept
    run.shuffle_gen = torch.Generator().manual_seed(seed + 1)
    drop_gen = torch.Generator().manual_seed(seed + 2)
    if not 0.0 <= float(input_dropout) < 1.0:
        raise ValueError(f"input_dropout {input_dropout!r}: a probability in [0, 1)")
    # its own generator, so that input_dropout=0 leaves every other draw (and the head) as before
    run.in_drop = _SeededDropout(input_dropout, torch.Generator().manual_seed(seed + 3))
    net = run.net = model.network
    for i, m in enumerate(net):
        if isinstance(m, nn.Dropout):
            net[i] = _SeededDropout(m.p, drop_gen)
    run.first_linear = net[0]
    run.first_w16 = _CastOnceLinear(net[0]) if bf16 and _CAST_INTO_KEPT_BUFFERS else None
    if run.first_w16 is not None:
        net[0] = run.first_w16
    decay = [p for nme, p in model.named_parameters() if nme.endswith("weight")]
    no_decay = [p for nme, p in model.named_parameters() if nme.endswith("bias")]
    run.opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=bool(fused))
    return run


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(bf16))


def _fit_epoch(run: SimpleNamespace, data: SimpleNamespace, loss_fn: Callable, batch_size: int, bf16: bool,
               ema) -> float:
    """One pass over the training rows in a seeded shuffle; returns the mean training loss."""
    model, opt, n = run.model, run.opt, data.n
    model.train()
    perm = torch.randperm(n, generator=run.shuffle_gen)
    total = 0.0
    for s in range(0, n, batch_size):
        idx = perm[s:s + batch_size]
        opt.zero_grad(set_to_none=True)
        with _autocast(bf16):
            loss = loss_fn(model(run.in_drop(data.Xt[idx.numpy()])).float(), data.yt[idx], idx)
        loss.backward()
        if run.first_w16 is not None:
            run.first_w16.to_master()
        opt.step()
        if run.avg is not None:
            run.steps += 1
            with torch.no_grad():
                torch._foreach_lerp_(run.avg_params, run.raw_params,
                                     1.0 - min(float(ema), (1 + run.steps) / (10 + run.steps)))
        total += float(loss.detach()) * len(idx)
    return total / n


def _validate(kept: MLPHead, data: SimpleNamespace, stop_on: str, class_w: torch.Tensor, bf16: bool
              ) -> tuple[float, float]:
    """(validation mean_group_macro_f1, early-stopping score: that F1, or minus the class-weighted CE)."""
    with _autocast(bf16):
        logits = logits_of(kept, data.Xv, chunk_rows=_VAL_ROWS)
    f1 = mean_group_macro_f1(data.yv, logits.argmax(dim=1).numpy(), data.gv)
    score = f1 if stop_on == "f1" else -float(
        nn.functional.cross_entropy(logits.float(), data.yv_t, weight=class_w))
    return f1, score


class _Best:
    """Early stopping's record: the best score, its F1 and epoch, a copy of its state, and the
    number of epochs since (``stale``)."""

    def __init__(self):
        self.state, self.score, self.f1, self.epoch, self.stale = None, -np.inf, None, 0, 0

    def update(self, score: float, f1: float, epoch: int, kept: MLPHead) -> None:
        if score > self.score:
            self.score, self.f1, self.epoch, self.stale = score, f1, epoch, 0
            # into one kept copy: a new copy each time held two while the old one was dropped
            # (the widest heads' state is 80 MB at 7,220 inputs)
            if self.state is None:
                self.state = copy.deepcopy(kept.state_dict())
            else:
                for key, value in kept.state_dict().items():
                    self.state[key].copy_(value)
        else:
            self.stale += 1


def _fit_result(run: SimpleNamespace, data: SimpleNamespace, best: _Best, history: dict, max_epochs: int
                ) -> tuple[MLPHead, dict]:
    """Undo the training-time swaps, restore the kept weights, fold the standardisation in."""
    model, net = run.model, run.net
    for i, m in enumerate(net):
        if isinstance(m, _SeededDropout):
            net[i] = nn.Dropout(m.p)
    net[0] = run.first_linear
    run.opt.zero_grad(set_to_none=True)    # a kept head (fold heads are kept) holds no gradients
    del run.opt
    if data.has_val and best.state is not None:
        model.load_state_dict(best.state)
        history["best_epoch"], history["best_val_f1"] = best.epoch, float(best.f1)
    else:
        if run.avg is not None:
            model.load_state_dict(run.avg.state_dict())
        history["best_epoch"] = max_epochs
    fold_standardisation(model, data.mean, data.std)
    history["mean"], history["std"] = data.mean.astype(np.float32), data.std.astype(np.float32)
    model.eval()
    return model, history


def measure_head(rows: int = 256, inputs: int = 2048, widths: tuple[int, int] = (512, 128)) -> dict:
    """{"bfloat16", "float32": rows/s, "unit"} of ``fit_head``'s training (one epoch of random
    rows at a head-like size after a short warm-up), for ``dtype auto`` of the head (``siren.dtype_auto``)."""
    import time

    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, inputs)).astype(np.float32)
    y = (rng.random(rows) < 0.5).astype(np.int64)
    speeds = {}
    for name, bf16 in (("float32", False), ("bfloat16", True)):
        fit_head(X[:32], y[:32], layer_dims=list(widths), dropout_rates=[0.0, 0.0], lr=1e-3, seed=0, max_epochs=1,
                 bf16=bf16)
        start = time.perf_counter()
        fit_head(X, y, layer_dims=list(widths), dropout_rates=[0.0, 0.0], lr=1e-3, seed=0, max_epochs=1, bf16=bf16)
        speeds[name] = rows / (time.perf_counter() - start)
    return {**speeds, "unit": "rows/s"}
