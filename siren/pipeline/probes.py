"""Layer-wise L1-regularised logistic probes, all layers solved at once.

Reads features X (n, L, d) (float16/float32 array or ``np.memmap``; read layer chunk by
layer chunk, never copied whole) with labels y (n,) in {0, 1}; writes nothing to disk
itself: ``fit_probe_grid`` returns a ``ProbeGrid`` whose ``to_dict()`` the training entry
point saves as JSON/npz.

Objective, per layer l (the paper's)::

    min_{w, b}  mean_i BCE(y_i, sigmoid(z_i . w + b))  +  ||w||_1 / C

with z_i the layer's pooled vector *standardised per neuron* (train mean and std), and the
intercept b not penalised. scikit-learn's ``LogisticRegression(penalty="l1")`` minimises
``||w||_1 + C_sk * sum_i loss_i``; dividing by ``C_sk * n`` shows that it has the same
minimiser when ``C_sk = C / n``.

Why standardise: the residual stream has a few neurons with huge magnitudes; without
scaling, the L1 penalty would favour them for their scale, not for their information, and
|w| (which the selection step ranks) would not be comparable across neurons. The learned
``coef_`` is therefore in the standardised space; ``mean_``/``scale_`` are kept so that
``decision_function`` applies the same transform to raw features.

Solver: FISTA (accelerated proximal gradient) with gradient-based adaptive restart
(O'Donoghue & Candes 2015), batched over layers as (L, n, d) float32 tensors in torch. The
proximal step is soft-thresholding, so unimportant weights are exactly zero. Step size
1 / Lip with Lip = max(lambda_max(Z^T Z / n), 1) / 4 (Z is centred, so the intercept column
decouples), lambda_max from a per-layer power iteration with a safety margin. A layer stops
when its proximal-gradient step is small: ||x+ - y||_inf <= tol * max(1, ||x+||_inf)
(x = (w, b), y the extrapolated point), or at ``max_iter``.

How exact that is: the step is 1 / Lip, and the pooled neurons of a layer are strongly
correlated (Lip is large), so at the default ``tol`` = 1e-4 (training's ``probe_tol``) a layer
can stop while its objective is still above the optimum: on the offline-six protocol's
smollm2-135m mlp_mean features at C = 1000, layers 10-15 stop after 67-190 iterations with
objectives up to 0.045 above the optimum and more non-zero weights (540 instead of 203 in
layer 11); ``tol`` = 1e-6 reaches the optimum (the same objectives as 1e-8) in 432-1,860
iterations (``experiments/head_search_offline6/probe_convergence.log``). The head does not
notice: selecting from the converged probes gave the same held-out F1 within the seeds'
spread (``probe_tol6_s*.json`` there) at about 5x the probes' time, so the default stays 1e-4.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from siren.config import command_defaults
from siren.metrics import mean_group_macro_f1_columns
from siren.pipeline.cache import RowStack

__all__ = ["ProbeGrid", "fit_probe_grid", "DEFAULT_TOL", "C_RULES"]

# fit_probe_grid's stopping tolerance unless told otherwise: the one every run used before
# training's `probe_tol` setting existed (configs/defaults.yaml keeps it as the default)
DEFAULT_TOL = 1e-4

# How fit_probe_grid picks each layer's C (training's `probe_c_rule`): "best": the best validation
# F1 (the paper's); "one_se": the smallest C whose validation F1 is at least the best's minus one
# bootstrap standard error of it (glmnet's "1se" rule: the sparsest probe that validation cannot
# tell from the best). Its sparser probes give the head fewer inputs (a faster head search) that
# are as good on held-out rows the probes never saw (experiments/head_search_offline6/README.md).
C_RULES = ("best", "one_se")
# bootstrap resamples of the validation rows behind "one_se"'s standard error, and their seed
ONE_SE_RESAMPLES = 200
ONE_SE_SEED = 0

# Keep one (L_chunk, n, d) float32 block under this many bytes (plus a few (L, d) vectors);
# compaction can briefly hold two blocks. 256 MiB holds all 30 layers of smollm2-135m for the
# offline-six protocol's 3,600 training rows; with more rows the layers are split into chunks
# (at 512 MiB the probes stage peaked at 1.65 GiB on 1.71x those rows).
_CHUNK_BYTES = 256 << 20


def _layer_chunks(n: int, L: int, d: int, max_bytes: int = _CHUNK_BYTES) -> list[tuple[int, int]]:
    per_layer = max(1, n * d * 4)
    size = max(1, min(L, max_bytes // per_layer))
    return [(s, min(s + size, L)) for s in range(0, L, size)]


def _load_chunk(X, l0: int, l1: int, device) -> torch.Tensor:
    """X[:, l0:l1] (n, Lc, d) any dtype -> (Lc, n, d) float32 tensor, always a fresh copy
    (the caller standardises it in place, so it must never alias the user's array)."""
    n, _, d = X.shape
    block = np.empty((l1 - l0, n, d), np.float32)
    block[...] = np.asarray(X[:, l0:l1]).transpose(1, 0, 2)    # one chunk only, even from a memmap
    return torch.from_numpy(block).to(device)


def _standardise_stats(Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Z (Lc, n, d) -> mean, scale (Lc, d); constant neurons get scale 1 (they become 0).

    Two passes per layer (mean, then centred second moment): accurate in float32 and only
    one layer's temporary at a time."""
    mean = torch.empty(Z.shape[0], Z.shape[2], dtype=torch.float32, device=Z.device)
    scale = torch.empty_like(mean)
    for j in range(Z.shape[0]):
        mu = Z[j].mean(dim=0, dtype=torch.float64).float()
        sd = ((Z[j] - mu) ** 2).mean(dim=0).sqrt()
        mean[j] = mu
        scale[j] = torch.where(sd > 1e-6 * (1.0 + mu.abs()), sd, torch.ones_like(sd))
    return mean, scale


def _lipschitz(Z: torch.Tensor, n_iter: int = 30, init_seed: int = 0) -> torch.Tensor:
    """Upper estimate of the gradient's Lipschitz constant per layer. Z (Lc, n, d) centred."""
    Lc, n, d = Z.shape
    g = torch.Generator(device="cpu").manual_seed(init_seed)
    v = torch.randn(Lc, d, 1, generator=g).to(Z.device)
    v = v / v.norm(dim=1, keepdim=True)
    lam = torch.zeros(Lc, device=Z.device)
    for _ in range(n_iter):
        u = torch.bmm(Z.transpose(1, 2), torch.bmm(Z, v)) / n     # (Lc, d, 1)
        lam = u.norm(dim=1).squeeze(-1)
        v = u / lam.clamp_min(1e-30)[:, None, None]
    # Power iteration approaches lambda_max from below: 10% margin keeps the step safe.
    return torch.maximum(lam * 1.1, torch.ones_like(lam)) / 4.0


def _fista(Z: torch.Tensor, y: torch.Tensor, C: float | torch.Tensor, w0: torch.Tensor, b0: torch.Tensor,
           lip: torch.Tensor, tol: float, max_iter: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve all layers of a chunk. Z (Lc, n, d) standardised, y (n,) float {0,1}, C one
    float or (Lc,) per layer, w0 (Lc, d), b0 (Lc,), lip (Lc,) -> w (Lc, d), b (Lc,), n_iter (Lc,) int64.

    Converged layers leave the batch (the block is compacted), so late iterations cost
    only the slow layers.
    """
    Lc, n, d = Z.shape
    w_out, b_out = w0.clone(), b0.clone()
    it_out = torch.full((Lc,), max_iter, dtype=torch.int64)
    active = torch.arange(Lc)
    Za, lipa = Z, lip
    x_w, x_b = w0.clone(), b0.clone()                 # current iterate x_k
    y_w, y_b = w0.clone(), b0.clone()                 # extrapolated point
    t = torch.ones(Lc, dtype=Z.dtype, device=Z.device)
    lam = 1.0 / C                                     # a float, or (Lc,) compacted with the layers
    for k in range(1, max_iter + 1):
        step = 1.0 / lipa                                             # (La,)
        m = torch.baddbmm(y_b[:, None, None], Za, y_w[:, :, None]).squeeze(-1)   # (La, n)
        r = (torch.sigmoid(m) - y) / n                                # d mean BCE / d m
        g_w = torch.bmm(r[:, None, :], Za).squeeze(1)                 # (La, d)
        g_b = r.sum(dim=1)
        v = y_w - step[:, None] * g_w
        shrink = (step * lam)[:, None]
        nx_w = torch.sign(v) * torch.clamp(v.abs() - shrink, min=0.0)   # prox of ||.||_1 / C
        nx_b = y_b - step * g_b
        # stopping: size of the prox-gradient step from y, relative to the iterate
        diff = torch.maximum((nx_w - y_w).abs().amax(dim=1), (nx_b - y_b).abs())
        size = torch.maximum(nx_w.abs().amax(dim=1), nx_b.abs()).clamp_min(1.0)
        done = diff <= tol * size
        # adaptive restart: momentum pointing against the prox-gradient step -> reset
        restart = ((y_w - nx_w) * (nx_w - x_w)).sum(dim=1) + (y_b - nx_b) * (nx_b - x_b) > 0
        t_new = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = torch.where(restart, torch.zeros_like(t), (t - 1.0) / t_new)
        t = torch.where(restart, torch.ones_like(t), t_new)
        y_w = nx_w + beta[:, None] * (nx_w - x_w)
        y_b = nx_b + beta * (nx_b - x_b)
        x_w, x_b = nx_w, nx_b
        if bool(done.any()):
            idx = active[done]
            w_out[idx], b_out[idx] = x_w[done], x_b[done]
            it_out[idx] = k
            keep = ~done
            active = active[keep]
            if active.numel() == 0:
                return w_out, b_out, it_out
            x_w, x_b, y_w, y_b, t = x_w[keep], x_b[keep], y_w[keep], y_b[keep], t[keep]
            lipa = lipa[keep]
            if torch.is_tensor(lam):
                lam = lam[keep]
            Za = Za[keep]      # one copy per finishing event: cheap next to the iterations
    w_out[active], b_out[active] = x_w, x_b
    return w_out, b_out, it_out


@dataclasses.dataclass
class _Chunk:
    data: torch.Tensor                     # (Lc, n, d) standardised
    stats: tuple[torch.Tensor, torch.Tensor]


def _prepare_chunk(X, l0, l1, device) -> tuple[_Chunk, torch.Tensor]:
    """Layers l0:l1 of X standardised (train mean and std), and their Lipschitz estimates."""
    Z = _load_chunk(X, l0, l1, device)
    mean, scale = _standardise_stats(Z)
    Z.sub_(mean[:, None, :]).div_(scale[:, None, :])          # in place: no second copy
    return _Chunk(Z, (mean, scale)), _lipschitz(Z)


def _init_params(Z: torch.Tensor, yt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w = 0 and the intercept that fits the base rate (the optimum along b). Z (Lc, n, d)."""
    p = float(yt.mean().clamp(1e-6, 1 - 1e-6))
    return (torch.zeros(Z.shape[0], Z.shape[2], device=Z.device),
            torch.full((Z.shape[0],), math.log(p / (1 - p)), device=Z.device))


def _decision(X, coef, intercept, mean, scale, chunk_rows: int = 2048) -> np.ndarray:
    """Logits of standardised-space probes on raw X (n, L, d) -> (n, L) float64.

    Folds the standardisation into raw-space weights (w / scale, b - mean . w / scale), so
    the features are read once, in row chunks, without a standardised copy."""
    w_raw = (coef / scale).astype(np.float32)                               # (L, d)
    b_raw = intercept.astype(np.float64) - np.einsum("ld,ld->l", mean.astype(np.float64),
                                                     w_raw.astype(np.float64))
    n = X.shape[0]
    out = np.empty((n, coef.shape[0]), np.float64)
    for s in range(0, n, chunk_rows):
        block = np.asarray(X[s:s + chunk_rows], dtype=np.float32)           # (c, L, d)
        out[s:s + chunk_rows] = np.einsum("nld,ld->nl", block, w_raw) + b_raw
    return out


# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class ProbeGrid:
    """Probes fitted for every C, and per layer the C that fit_probe_grid's ``c_rule`` picked.

    c_values (m,); chosen_C (L,); coef (L, d) float32 standardised space; intercept (L,);
    mean, scale (L, d); train_f1, val_f1 (L,) at the chosen C (mean over datasets of
    macro-F1); val_f1_by_C (m, L); n_iter_by_C (m, L). ``refit``: coef, intercept, mean and
    scale are the chosen C's probes fitted again on train + validation rows (the F1 values
    stay those of the train-only probes, which chose C and give the layer weights).
    """

    c_values: np.ndarray
    chosen_C: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    train_f1: np.ndarray
    val_f1: np.ndarray
    val_f1_by_C: np.ndarray
    n_iter_by_C: np.ndarray | None = None
    refit: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (JSON-ready); big arrays are nested lists of floats."""
        return {f.name: (None if getattr(self, f.name) is None
                         else np.asarray(getattr(self, f.name)).tolist())
                for f in dataclasses.fields(self)}

    def decision_function(self, X) -> np.ndarray:
        """X (n, L, d) -> (n, L) logits of the chosen probes."""
        return _decision(X, self.coef, self.intercept, self.mean, self.scale)


def one_se_choice(y_val: np.ndarray, pred: np.ndarray, groups_val: np.ndarray, *,
                  resamples: int = ONE_SE_RESAMPLES, resample_seed: int = ONE_SE_SEED) -> np.ndarray:
    """The "one_se" rule. pred (m, n_val, L) bool: each C's (smallest first) validation
    predictions -> (L,) index of the chosen C per layer: the smallest C whose validation F1 is
    at least the best C's minus the standard deviation of the best C's F1 over ``resamples``
    seeded bootstrap resamples of the validation rows."""
    m, nv, L = pred.shape
    f1 = np.stack([mean_group_macro_f1_columns(y_val, pred[i], groups_val) for i in range(m)])   # (m, L)
    best = np.argmax(f1, axis=0)
    cols = np.arange(L)
    best_pred = pred[best, :, cols].T      # (n_val, L): each layer's best C's predictions
    rng = np.random.default_rng(resample_seed)
    boot = np.zeros((resamples, L))
    for r in range(resamples):             # only the best C's F1 needs a standard error
        idx = rng.integers(0, nv, nv)
        boot[r] = mean_group_macro_f1_columns(y_val[idx], best_pred[idx], groups_val[idx])
    floor = f1[best, cols] - boot.std(axis=0)
    return np.argmax(f1 >= floor, axis=0)      # first True = smallest C within one se of the best


def fit_probe_grid(X_train, y_train, X_val, y_val, groups_val, c_values,
                   *, groups_train=None, tol: float | None = None, max_iter: int = 20000,
                   c_rule: str | None = None, refit: bool | None = None, probe_device: str | torch.device = "cpu",
                   progress: bool = True) -> ProbeGrid:
    """Fit the probes for every C and keep, per layer, one by ``c_rule`` (see C_RULES).

    X_train (n, L, d), y_train (n,); X_val (m, L, d), y_val (m,), groups_val (m,) dataset
    index; c_values: iterable of C. C values are solved from the strongest penalty
    (smallest C) up, each warm-started from the previous solution, with the standardised
    training block built once per layer chunk. "best": the best validation F1, ties to the
    smaller C (sparser probe); "one_se": ``one_se_choice``. ``groups_train`` (n,) lets
    train_f1 use the paper's metric too (one group if omitted). ``refit``: then fit each
    layer's chosen probe again, at its C, on the train and validation rows together (from
    zero, with their own standardisation), and return those weights (see ProbeGrid.refit).
    tol, c_rule, refit None: configs/defaults.yaml's probe_tol, probe_c_rule, probe_refit.
    """
    defaults = command_defaults("train")
    tol = defaults["probe_tol"] if tol is None else tol
    c_rule = defaults["probe_c_rule"] if c_rule is None else c_rule
    refit = defaults["probe_refit"] if refit is None else refit
    if c_rule not in C_RULES:
        raise ValueError(f"c_rule must be one of {C_RULES}, got {c_rule!r}")
    cs = np.array(sorted(float(c) for c in c_values), dtype=np.float64)
    if cs.size == 0:
        raise ValueError("c_values is empty")
    n, L, d = X_train.shape
    y_tr = np.asarray(y_train).reshape(-1)
    y_va = np.asarray(y_val).reshape(-1)
    g_va = np.asarray(groups_val).reshape(-1)
    g_tr = np.zeros(n, np.int64) if groups_train is None else np.asarray(groups_train).reshape(-1)
    device = probe_device
    yt = torch.as_tensor(y_tr, dtype=torch.float32, device=device)

    m = len(cs)
    coefs, inters, n_iter, mean, scale = _solve_path(X_train, yt, list(cs), tol, max_iter, device, progress, "probes")
    val_f1_by_C = np.zeros((m, L))
    train_f1_by_C = np.zeros((m, L))
    val_pred = np.zeros((m, len(y_va), L), bool) if c_rule == "one_se" else None
    for i in range(m):
        pred = _decision(X_val, coefs[i], inters[i], mean, scale) > 0
        val_f1_by_C[i] = mean_group_macro_f1_columns(y_va, pred, g_va)
        if val_pred is not None:
            val_pred[i] = pred
        train_f1_by_C[i] = mean_group_macro_f1_columns(
            y_tr, _decision(X_train, coefs[i], inters[i], mean, scale) > 0, g_tr)
    if c_rule == "one_se":
        best = one_se_choice(y_va, val_pred, g_va)
    else:
        best = np.argmax(val_f1_by_C, axis=0)        # first max = smallest C on ties
    rows = np.arange(L)
    coef, intercept = coefs[best, rows], inters[best, rows]
    if refit:
        coef, intercept, mean, scale = _refit(RowStack([X_train, X_val]), np.concatenate([y_tr, y_va]),
                                              cs[best], tol, max_iter, device, progress)
    return ProbeGrid(
        c_values=cs, chosen_C=cs[best], coef=coef, intercept=intercept,
        mean=mean, scale=scale, train_f1=train_f1_by_C[best, rows],
        val_f1=val_f1_by_C[best, rows], val_f1_by_C=val_f1_by_C, n_iter_by_C=n_iter, refit=refit)


def _solve_path(X, yt: torch.Tensor, path: list, tol: float, max_iter: int, device, progress: bool, desc: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit every layer's probe on X (n, L, d), yt (n,) at each C of ``path`` in turn, layer chunk by
    layer chunk; each C is one float or an (L,) array (a C per layer). The first starts from
    ``_init_params``, each later one warm-starts from the one before. -> coef (m, L, d),
    intercept (m, L), n_iter (m, L), and the standardisation mean, scale (L, d) of X."""
    n, L, d = X.shape
    m = len(path)
    coefs = np.zeros((m, L, d), np.float32)
    inters = np.zeros((m, L), np.float32)
    n_iter = np.zeros((m, L), np.int64)
    mean = np.zeros((L, d), np.float32)
    scale = np.ones((L, d), np.float32)
    chunks = _layer_chunks(n, L, d)
    bar = tqdm(total=len(chunks) * m, desc=desc, unit="C", disable=not progress, leave=False)
    for l0, l1 in chunks:
        Z, lip = _prepare_chunk(X, l0, l1, device)
        mean[l0:l1], scale[l0:l1] = (t.cpu().numpy() for t in Z.stats)
        prev = None
        for i, C in enumerate(path):
            w0, b0 = _init_params(Z.data, yt) if prev is None else prev
            c = float(C) if np.ndim(C) == 0 else torch.as_tensor(C[l0:l1], dtype=torch.float32, device=device)
            w, b, it = _fista(Z.data, yt, c, w0, b0, lip, tol, max_iter)
            prev = (w, b)
            coefs[i, l0:l1], inters[i, l0:l1], n_iter[i, l0:l1] = (
                w.cpu().numpy(), b.cpu().numpy(), it.numpy())
            bar.set_postfix(layers=f"{l0}-{l1 - 1}", C=f"{C:g}" if np.ndim(C) == 0 else "per layer",
                            iters=int(it.max()))
            bar.update(1)
        del Z
    bar.close()
    return coefs, inters, n_iter, mean, scale


def _refit(X, y: np.ndarray, C: np.ndarray, tol: float, max_iter: int, device, progress: bool
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each layer's probe at its own C on X (n, L, d), y (n,); C (L,) -> coef (L, d), intercept (L,),
    mean, scale (L, d). From zero, like the grid's first C: a warm start from the train-only
    solution would leave the early-stopped refit close to it."""
    yt = torch.as_tensor(y, dtype=torch.float32, device=device)
    coefs, inters, _, mean, scale = _solve_path(X, yt, [C], tol, max_iter, device, progress,
                                                "probes: refit on train+validation")
    return coefs[0], inters[0], mean, scale
