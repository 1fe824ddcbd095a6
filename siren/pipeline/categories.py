"""Fitting the category head (runtime side: siren.categories).

Reads: the guard's selected-neuron features Z (n, k) of the train and validation rows (the
same matrix the binary head reads) and the rows' category targets (Y, M) (n, C) in the output
taxonomy (`Taxonomy.targets`; M False = the row's source does not annotate that category).
Writes: `categories.safetensors` + `categories.json` in the guard folder (`CategoryModel.save`).

How: a category is trained when its training rows hold at least MIN_TRAIN_POSITIVES positives
and as many negatives; the others are left out (reported as not trained). Two kinds of head,
both with a masked loss (a row adds loss only for the categories its source annotates), on
standardised features: per-category L2 logistic probes (one per category, fitted on the rows
that annotate it; stored as one linear layer), and a multi-label MLP with one hidden layer
minimising the masked BCE (full batch, AdamW). The kind and its regularisation are chosen on the
validation rows (mean per-category AUROC over the categories with at least MIN_VAL_POSITIVES
validation positives). On the offline-six guard the probes won (validation AUROC 0.92 against
0.90-0.91 for MLPs of width 32-256, 0.79 for a linear layer trained with AdamW's weight decay;
reports/categories_offline6). Each category's threshold
maximises its F1 on the validation rows that annotate it; a category with fewer than
MIN_VAL_POSITIVES validation positives keeps FALLBACK_THRESHOLD (a sigmoid of a BCE-trained
score: "more likely than not"), and categories.json says which threshold came from where.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from siren.categories import CategoryHead, CategoryModel, Taxonomy
from siren.log import log

MIN_TRAIN_POSITIVES = 5
MIN_VAL_POSITIVES = 5
FALLBACK_THRESHOLD = 0.5
# ("probes", C of sklearn's L2 logistic regression) or ("mlp", hidden width, weight decay)
GRID = (("probes", 1e-4), ("probes", 1e-3), ("probes", 1e-2), ("probes", 1e-1), ("mlp", 32, 1e-1), ("mlp", 128, 1e-1))
EPOCHS = 300
LR = 1e-2


def masked_bce(logits: torch.Tensor, Y: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the annotated (row, category) cells only."""
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, Y, reduction="none")
    return (loss * M).sum() / M.sum().clamp(min=1)


def fit_head(Z: np.ndarray, Y: np.ndarray, M: np.ndarray, *, hidden: int, weight_decay: float, seed: int,
             epochs: int = EPOCHS, lr: float = LR) -> CategoryHead:
    """A CategoryHead fitted on Z (n, k) against Y, M (n, C) (masked BCE, full batch)."""
    g = torch.Generator().manual_seed(int(seed))
    z = torch.as_tensor(np.asarray(Z, dtype=np.float32))
    head = CategoryHead(z.shape[1], Y.shape[1], hidden)
    with torch.no_grad():       # seeded init from our generator, not the global one
        for p in head.network.parameters():
            bound = 1.0 / np.sqrt(p.shape[-1] if p.ndim == 2 else max(1, len(p)))
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
        head.input_mean.copy_(z.mean(0))
        head.input_scale.copy_(z.std(0).clamp(min=1e-6))
    y, m = torch.as_tensor(Y, dtype=torch.float32), torch.as_tensor(M, dtype=torch.float32)
    opt = torch.optim.AdamW(head.network.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    for _ in range(epochs):
        opt.zero_grad()
        masked_bce(head(z), y, m).backward()
        opt.step()
    return head.eval().requires_grad_(False)


def fit_probes(Z: np.ndarray, Y: np.ndarray, M: np.ndarray, *, C: float, seed: int) -> CategoryHead:
    """A linear CategoryHead whose row c is an L2 logistic probe (sklearn, strength C) fitted on the
    standardised features of the rows that annotate category c."""
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(Z, dtype=np.float32)
    head = CategoryHead(z.shape[1], Y.shape[1], 0)
    mean, scale = z.mean(0), np.maximum(z.std(0), 1e-6)
    zs = (z - mean) / scale
    weight, bias = np.zeros((Y.shape[1], z.shape[1]), np.float32), np.zeros(Y.shape[1], np.float32)
    for c in range(Y.shape[1]):
        keep = M[:, c]
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(zs[keep], Y[keep, c])
        weight[c], bias[c] = clf.coef_[0], clf.intercept_[0]
    with torch.no_grad():
        head.input_mean.copy_(torch.from_numpy(mean))
        head.input_scale.copy_(torch.from_numpy(scale))
        head.network[0].weight.copy_(torch.from_numpy(weight))
        head.network[0].bias.copy_(torch.from_numpy(bias))
    return head.eval().requires_grad_(False)


def fit_setting(setting: tuple, Z, Y, M, seed: int) -> CategoryHead:
    """The head of one GRID entry."""
    if setting[0] == "probes":
        return fit_probes(Z, Y, M, C=float(setting[1]), seed=seed)
    return fit_head(Z, Y, M, hidden=int(setting[1]), weight_decay=float(setting[2]), seed=seed)


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC-AUC (NaN when y holds one class)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def best_f1_threshold(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(threshold, F1 of the positive class) maximising F1 over the observed scores."""
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    tp = np.cumsum(ys)
    k = np.arange(1, len(ys) + 1)
    f1 = 2 * tp / (k + ys.sum())
    last = np.r_[ss[1:] != ss[:-1], True]      # a threshold sits at the end of a run of equal scores
    i = int(np.argmax(np.where(last, f1, -1)))
    return float(ss[i]), float(f1[i])


def choose_thresholds(P: np.ndarray, Y: np.ndarray, M: np.ndarray, names: list[str]) -> tuple[np.ndarray, dict]:
    """Per category: the validation-F1-maximising threshold, or FALLBACK_THRESHOLD when it has
    fewer than MIN_VAL_POSITIVES annotated validation positives. Returns (thresholds, how)."""
    thr, how = np.full(len(names), FALLBACK_THRESHOLD), {}
    for c, name in enumerate(names):
        keep = M[:, c]
        pos = int(Y[keep, c].sum())
        if pos < MIN_VAL_POSITIVES or pos == keep.sum():
            how[name] = {"source": "fallback", "validation_positives": pos}
            continue
        thr[c], f1 = best_f1_threshold(Y[keep, c], P[keep, c])
        how[name] = {"source": "validation", "validation_positives": pos, "validation_f1": round(f1, 4)}
    return thr, how


def trainable(Y: np.ndarray, M: np.ndarray, names) -> list[int]:
    """Indices of the categories with enough annotated positives and negatives to fit."""
    pos = (Y * M).sum(0)
    neg = M.sum(0) - pos
    return [c for c in range(len(names)) if pos[c] >= MIN_TRAIN_POSITIVES and neg[c] >= MIN_TRAIN_POSITIVES]


def _val_score(head: CategoryHead, Zv, Yv, Mv) -> float:
    P = torch.sigmoid(head(torch.as_tensor(np.asarray(Zv, dtype=np.float32)))).numpy()
    aucs = [auroc(Yv[Mv[:, c], c], P[Mv[:, c], c]) for c in range(Yv.shape[1])
            if Yv[Mv[:, c], c].sum() >= MIN_VAL_POSITIVES]
    aucs = [a for a in aucs if a == a]
    return float(np.mean(aucs)) if aucs else float("nan")


def fit_category_model(Z_train, Y_train, M_train, Z_val, Y_val, M_val, taxonomy: Taxonomy, *,
                       seed: int, grid=GRID) -> CategoryModel | None:
    """The category head of the trainable categories, its settings and thresholds chosen on the
    validation rows; None when no category has enough training rows. Only rows that annotate
    some category are read."""
    names = list(taxonomy.names)
    cols = trainable(Y_train, M_train, names)
    if not cols:
        log("category head: no category has enough annotated training rows; none trained")
        return None
    trained = [names[c] for c in cols]
    rt, rv = M_train[:, cols].any(1), M_val[:, cols].any(1)
    Zt, Yt, Mt = np.asarray(Z_train[rt], np.float32), Y_train[rt][:, cols], M_train[rt][:, cols]
    Zv, Yv, Mv = np.asarray(Z_val[rv], np.float32), Y_val[rv][:, cols], M_val[rv][:, cols]
    started, search = time.perf_counter(), []
    best = None
    for setting in grid:
        head = fit_setting(setting, Zt, Yt, Mt, seed)
        score = _val_score(head, Zv, Yv, Mv) if len(Zv) else float("nan")
        search.append({"setting": list(setting), "validation_mean_auroc": round(score, 4)})
        if best is None or (score == score and not score <= best[0]):
            best = (score, setting, head)
    score, setting, head = best
    with torch.no_grad():
        Pv = torch.sigmoid(head(torch.as_tensor(Zv))).numpy() if len(Zv) else np.zeros((0, len(cols)))
    thresholds, how = choose_thresholds(Pv, Yv, Mv, trained)
    untrained = [n for n in names if n not in trained]
    log(f"category head: {len(trained)} categories trained ({', '.join(trained)}); {setting}, "
        f"validation mean AUROC {score:.4f}; not trained: {', '.join(untrained) or 'none'} "
        f"({time.perf_counter() - started:.1f} s)")
    info = {"not_trained": untrained, "thresholds_how": how, "setting": list(setting), "search": search,
            "train_rows": int(rt.sum()), "validation_rows": int(rv.sum()),
            "train_positives": {n: int(Yt[:, i].sum()) for i, n in enumerate(trained)},
            "min_train_positives": MIN_TRAIN_POSITIVES, "min_validation_positives": MIN_VAL_POSITIVES,
            "fallback_threshold": FALLBACK_THRESHOLD, "seed": int(seed)}
    return CategoryModel(head, trained, thresholds, names, info)


def category_metrics(P: np.ndarray, Y: np.ndarray, M: np.ndarray, names: list[str],
                     thresholds: np.ndarray | None) -> dict:
    """Per category (columns of P, Y, M): rows annotated, positives, AUROC, PR-AUC and (with
    thresholds) F1 of the positive class at them, over the annotated rows."""
    from sklearn.metrics import average_precision_score, f1_score

    out = {}
    for c, name in enumerate(names):
        keep = M[:, c]
        y, s = Y[keep, c].astype(int), P[keep, c]
        pos = int(y.sum())
        row = {"n": int(keep.sum()), "positives": pos}
        if 0 < pos < len(y):
            row.update(auroc=auroc(y, s), pr_auc=float(average_precision_score(y, s)))
            if thresholds is not None:
                row["f1"] = float(f1_score(y, (s >= thresholds[c]).astype(int), zero_division=0))
                row["threshold"] = float(thresholds[c])
        out[name] = row
    return out


def load_targets(datasets, split: str, ids: np.ndarray, groups: np.ndarray, taxonomy: Taxonomy,
                 split_kw: dict) -> tuple[np.ndarray, np.ndarray]:
    """(Y, M) (n, C) for the rows `ids` of `split` (row i from dataset `datasets[groups[i]]`, as
    `cache.load_split` stacks them), from the rows' `categories` (siren.data.row_categories)."""
    from siren import data
    from siren.errors import SirenError

    Y = np.zeros((len(ids), len(taxonomy.names)), dtype=np.float32)
    M = np.zeros_like(Y, dtype=bool)
    for gi, name in enumerate(datasets):
        rows = np.flatnonzero(np.asarray(groups) == gi)
        if not len(rows) or not taxonomy.annotates(name):
            continue
        frame = data.load_splits(name, **split_kw)[split]
        cats = dict(zip(frame["id"].astype(str), data.row_categories(frame)))
        missing = [str(i) for i in ids[rows] if str(i) not in cats]
        if missing:
            raise SirenError(f"{name}/{split}: row {missing[0]!r} of the feature cache is not in the data "
                             "(the data changed since extraction): extract again")
        Y[rows], M[rows] = taxonomy.targets(name, [cats[str(i)] for i in ids[rows]])
    return Y, M


def fit_run_categories(mode: str, datasets: list[str], seed: int, split_kw: dict, Z: np.ndarray, ids: np.ndarray,
                       groups: np.ndarray, n_train: int) -> CategoryModel | None:
    """The training run's category head (config key `category_head`: auto = fit when the
    training rows carry categories, off = never). Z (n, k): the selected features of the train
    rows (first n_train) then the validation rows, as the binary head's search reads them."""
    from siren.categories import load_taxonomy
    from siren.errors import SirenError

    if mode not in ("auto", "off"):
        raise SirenError(f"category_head must be auto or off, got {mode!r}")
    taxonomy = load_taxonomy()
    datasets = list(datasets)
    if mode == "off" or not any(taxonomy.annotates(d) for d in datasets):
        return None
    tr, va = slice(0, n_train), slice(n_train, len(ids))
    Yt, Mt = load_targets(datasets, "train", ids[tr], groups[tr], taxonomy, split_kw)
    if not Mt.any():
        log("category head: no training row carries categories; none trained")
        return None
    Yv, Mv = load_targets(datasets, "validation", ids[va], groups[va], taxonomy, split_kw)
    return fit_category_model(Z[tr], Yt, Mt, Z[va], Yv, Mv, taxonomy, seed=int(seed))
