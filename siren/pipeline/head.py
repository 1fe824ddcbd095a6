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
from typing import Callable

import numpy as np
import torch
from torch import nn

from siren.config import command_defaults
from siren.metrics import mean_group_macro_f1

from siren.mlp import MLPHead, logits_of

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


# Training under bf16 autocast casts the first Linear's fp32 weight (width x k, the head's
# largest tensor) to bf16 in every forward, and its bf16 gradient back to fp32 in every
# backward, each into a freshly allocated tensor. At smollm2's 7,220 inputs and a 1,600-wide
# first layer that gradient is 46 MB: above glibc's mmap threshold, so each step mapped and
# page-faulted it anew, and the two casts took as long as the layer's matrix products.
_CAST_INTO_KEPT_BUFFERS = True


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
    Xt = _Standardised(X, rows, mean, std, in_dtype)
    yt = torch.from_numpy(y)
    has_val = X_val is not None and y_val is not None
    if has_val:
        X_val = X_val if isinstance(X_val, np.ndarray) else np.asarray(X_val, dtype=np.float32)
        Xv = _Standardised(X_val, None if val_rows is None else np.asarray(val_rows, dtype=np.int64),
                           mean, std, in_dtype)
        yv = np.asarray(y_val).reshape(-1)
        gv = np.zeros(len(yv), np.int64) if groups_val is None else np.asarray(groups_val).reshape(-1)
        if val_rows is not None:
            yv, gv = yv[val_rows], gv[val_rows]
        yv_t = torch.from_numpy(np.asarray(yv, dtype=np.int64))

    # each class weighs the same: n / (2 n_c) (the "label" loss, and stop_on="loss")
    counts = np.bincount(y, minlength=2).astype(np.float64)
    class_w = torch.tensor(np.where(counts > 0, n / (2.0 * np.maximum(counts, 1)), 0.0), dtype=torch.float32)
    # loss_fn(logits (b, 2), target (b,), idx (b,) the batch's row numbers) -> weighted mean CE
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

    history: dict = {"val_f1": [], "train_loss": [], "best_epoch": 0, "best_val_f1": None}
    seed = int(seed)
    with torch.random.fork_rng(devices=[]):    # nn.Linear's own init would advance the global RNG
        model = MLPHead(k, layer_dims, dropout_rates)
    _seeded_init(model, torch.Generator().manual_seed(seed))
    # ema: an exponential moving average of the weights over the steps; it is what is
    # validated, kept and returned (the raw weights only train). Warm-up: the decay at step t
    # is min(ema, (1 + t) / (10 + t)), so the initial weights fade quickly.
    avg = None
    if ema is not None:
        if not 0.0 < float(ema) < 1.0:
            raise ValueError(f"ema {ema!r}: a decay in (0, 1), or None")
        avg = copy.deepcopy(model).eval().requires_grad_(False)   # before the dropouts are swapped
        avg_params, raw_params = list(avg.parameters()), list(model.parameters())
    kept = model if avg is None else avg      # the weights that are validated and kept
    steps = 0
    shuffle_gen = torch.Generator().manual_seed(seed + 1)
    drop_gen = torch.Generator().manual_seed(seed + 2)
    if not 0.0 <= float(input_dropout) < 1.0:
        raise ValueError(f"input_dropout {input_dropout!r}: a probability in [0, 1)")
    # its own generator, so that input_dropout=0 leaves every other draw (and the head) as before
    in_drop = _SeededDropout(input_dropout, torch.Generator().manual_seed(seed + 3))
    net = model.network
    for i, m in enumerate(net):
        if isinstance(m, nn.Dropout):
            net[i] = _SeededDropout(m.p, drop_gen)
    first_linear = net[0]
    first_w16 = _CastOnceLinear(first_linear) if bf16 and _CAST_INTO_KEPT_BUFFERS else None
    if first_w16 is not None:
        net[0] = first_w16
    decay = [p for nme, p in model.named_parameters() if nme.endswith("weight")]
    no_decay = [p for nme, p in model.named_parameters() if nme.endswith("bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                            fused=bool(fused))
    best_state, best_score, best_f1, best_epoch, stale = None, -np.inf, None, 0, 0
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(bf16))  # noqa: E731
    for epoch in range(1, max_epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=shuffle_gen)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(model(in_drop(Xt[idx.numpy()])).float(), yt[idx], idx)
            loss.backward()
            if first_w16 is not None:
                first_w16.to_master()
            opt.step()
            if avg is not None:
                steps += 1
                with torch.no_grad():
                    torch._foreach_lerp_(avg_params, raw_params, 1.0 - min(float(ema), (1 + steps) / (10 + steps)))
            total += float(loss.detach()) * len(idx)
        history["train_loss"].append(total / n)
        if not has_val:
            continue
        with autocast():
            logits = logits_of(kept, Xv, chunk_rows=_VAL_ROWS)
        f1 = mean_group_macro_f1(yv, logits.argmax(dim=1).numpy(), gv)
        history["val_f1"].append(f1)
        score = f1 if stop_on == "f1" else -float(
            nn.functional.cross_entropy(logits.float(), yv_t, weight=class_w))
        if score > best_score:
            best_score, best_f1, best_epoch, stale = score, f1, epoch, 0
            # into one kept copy: a new copy each time held two while the old one was dropped
            # (the widest heads' state is 80 MB at 7,220 inputs)
            if best_state is None:
                best_state = copy.deepcopy(kept.state_dict())
            else:
                for key, value in kept.state_dict().items():
                    best_state[key].copy_(value)
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(epoch, f1)
        if stale >= patience:
            break
    for i, m in enumerate(net):
        if isinstance(m, _SeededDropout):
            net[i] = nn.Dropout(m.p)
    net[0] = first_linear
    opt.zero_grad(set_to_none=True)    # a kept head (fold heads are kept) holds no gradients
    del opt
    if has_val and best_state is not None:
        model.load_state_dict(best_state)
        history["best_epoch"], history["best_val_f1"] = best_epoch, float(best_f1)
    else:
        if avg is not None:
            model.load_state_dict(avg.state_dict())
        history["best_epoch"] = max_epochs
    fold_standardisation(model, mean, std)
    history["mean"], history["std"] = mean.astype(np.float32), std.astype(np.float32)
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
