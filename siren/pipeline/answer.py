"""Stage `answer` of `siren train`: the answer verdict's head (is this answer harmful, given its prompt?).

Reads: the response-level rows (those with a response) of the training datasets' train and
validation splits, the backbone, and the final guard's selection and layer weights. The
answer's features are the guard's own `(input_dim,)` vector, pooled over the answer's tokens
only with the prompt in the backbone's context, computed by the runtime's function
(`siren.features.answer_spans` + `LayerFeatures.answer_means`), so training and serving cannot
drift; an answer prefix is the first t answer tokens, from the same forward.

Fits (reports/streaming_verdicts chose these on cross-validation): an L2 logistic head on the
finished answers plus their prefixes at `answer_cuts` answer tokens, labelled with the
answer's label; a harmful answer's prefix of t tokens weighs min(1, t / answer_ramp_tokens)
(its first tokens are often still harmless). With `answer_main_weight` w > 0 the verdict is
(1 - w) * that head + w * the main head on the same answer pool; the main head's share is judged
on its own out-of-fold scores (a fold ensemble's head i never saw CV fold i). The threshold (and the stream rule where
`debounce` / `min_answer_tokens` are null) is chosen on out-of-fold validation
streams (every `STREAM_EVERY` answer tokens, as the session is scored) for the target false-alarm
rate on safe streams (`target_false_alarm`): that is the stream's stop threshold. A finished
answer's verdict keeps the guard's `decision_threshold` (or, with `threshold_from_cv`, the one
that maximises the out-of-fold finished answers' macro-F1): the stream threshold sits high (a
stream is stopped the first time any prefix crosses it), and on finished answers it cost 0.058
macro-F1 against 0.5 on the offline-six test rows (reports/streaming_verdicts).

Writes (`save_answer_head`): `answer_head.safetensors` (`network.0.weight/bias`: one Linear,
the guard's Sequential layout) and `siren.answer_head` in siren_config.json, as issue 37's
contract says; what it chose goes into results.json under `answer_head`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siren.errors import SirenError
from siren.features import default_batch_tokens
from siren.log import log

ANSWER_WEIGHTS_NAME = "answer_head.safetensors"
STREAM_EVERY = 4            # validation streams are scored every 4 answer tokens (and at the last one)
RULE_GRID = [(k, m, e) for k in (1, 2, 3) for m in (0, 8, 16) for e in (None, 0.5)]


@dataclass
class AnswerFit:
    """What the stage chose: the head's state (None when shared), threshold, rule and a summary."""

    state: dict | None
    input_dim: int
    threshold: float
    rule: dict
    summary: dict = field(default_factory=dict)
    main_weight: float = 0.0     # the verdict = (1 - w) * this head + w * the main head (answer pools)
    decision_threshold: float | None = None   # a finished answer's verdict (None: `threshold`)


def finished_threshold(cfg: dict, streams: list, y: np.ndarray, g: np.ndarray) -> tuple[float, str]:
    """(threshold, source) of a finished answer's verdict: the guard's `decision_threshold`, or with
    `threshold_from_cv` the one maximising the mean macro-F1 of the out-of-fold finished answers
    (each stream's last score), as the main head's is chosen on its out-of-fold scores."""
    from siren.metrics import best_threshold

    if cfg.get("threshold_from_cv"):
        finished = np.array([scores[-1] for _points, scores in streams], dtype=np.float64)
        threshold, score = best_threshold(np.asarray(y), finished, np.asarray(g))
        log(f"answer verdict: decision threshold {threshold:.2f} from the out-of-fold finished answers "
            f"(mean macro-F1 {score:.4f} there)")
        return float(threshold), "cv"
    return float(cfg["decision_threshold"]), "config"


# ----------------------------------------------------------------- rows and features

def response_rows(datasets: list[str], split_kw: dict) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, list]:
    """(pairs, labels (n,), dataset index (n,), is_validation (n,), row ids) of the rows with a response."""
    from siren import data

    pairs, y, g, val, ids = [], [], [], [], []
    for gi, name in enumerate(datasets):
        frames = data.load_splits(name, **split_kw)
        for split in ("train", "validation"):
            f = frames.get(split)
            if f is None:
                continue
            f = f[f["response"].notna()]
            pairs += list(zip(f["prompt"].tolist(), f["response"].tolist()))
            y += f["label"].astype(int).tolist()
            g += [gi] * len(f)
            val += [split == "validation"] * len(f)
            ids += f["id"].astype(str).tolist()
    return pairs, np.asarray(y, np.int64), np.asarray(g, np.int64), np.asarray(val, bool), ids


def stream_points(n_answer: int, max_tokens: int) -> list[int]:
    """Answer-token counts where a stream is scored: every STREAM_EVERY tokens and the last one."""
    n = min(int(n_answer), int(max_tokens))
    pts = list(range(STREAM_EVERY, n + 1, STREAM_EVERY))
    if n and (not pts or pts[-1] != n):
        pts.append(n)
    return pts


def answer_features(features, pairs: list, selection: dict, weights: np.ndarray, pooling: str,
                    batch_tokens: int) -> tuple[np.ndarray, list[np.ndarray], list[list[int]]]:
    """The guard's features of the finished answers and of their prefixes at every stream point.

    features: a `LayerFeatures` over all layers of the guard's pooling. Returns (A (n, k) float32,
    per row its prefixes (m_i, k) float16, per row its stream points (answer tokens)); a row whose
    answer was truncated away has A = NaN and no prefixes. One forward per batch (the runtime's
    `answer_means`), row chunks bounded by `batch_tokens` so the (b, cuts, L, d) block stays small.
    """
    from siren.features import answer_spans, length_batches
    from siren.pipeline.select import aggregate

    ids, starts = answer_spans(features.tokenizer, pairs, features.max_length)
    n_ans = [len(x) - s for x, s in zip(ids, starts)]
    k = sum(len(selection[l]) for l in selection)
    A = np.full((len(ids), k), np.nan, dtype=np.float32)
    P: list = [np.zeros((0, k), np.float16)] * len(ids)
    points = [stream_points(n, features.max_length) for n in n_ans]
    for idx in length_batches([len(x) for x in ids], batch_tokens, max_batch_size=16):
        cuts = sorted({t for i in idx for t in points[i]})
        a, p = features.answer_means([ids[i] for i in idx], [starts[i] for i in idx], cuts)
        a, p = a[pooling].numpy(), p[pooling].numpy()          # (b, L, d), (b, C, L, d)
        agg_a = aggregate(np.nan_to_num(a), selection, weights)
        b, C = p.shape[:2]
        agg_p = aggregate(np.nan_to_num(p.reshape(b * C, *p.shape[2:])), selection, weights).reshape(b, C, k)
        col = {t: j for j, t in enumerate(cuts)}
        for j, i in enumerate(idx):
            if n_ans[i] > 0:
                A[i] = agg_a[j]
                P[i] = agg_p[j, [col[t] for t in points[i]]].astype(np.float16)
    return A, P, points


# ----------------------------------------------------------------- the head

class LogisticHead:
    """Standardised, label-balanced L2 logistic regression over the guard's features; `state()`
    folds the standardisation into one Linear(k, 2) whose softmax[1] is the probability."""

    def __init__(self, C: float, seed: int):
        self.C, self.seed = float(C), int(seed)

    def fit(self, X: np.ndarray, y: np.ndarray, w: np.ndarray) -> "LogisticHead":
        from sklearn.linear_model import LogisticRegression

        X = np.asarray(X, dtype=np.float32)
        self.mean_, self.std_ = X.mean(0), X.std(0) + 1e-6
        lr = LogisticRegression(C=self.C, max_iter=300, class_weight="balanced", random_state=self.seed)
        lr.fit((X - self.mean_) / self.std_, y, sample_weight=w)
        self.coef_ = lr.coef_[0].astype(np.float64) / self.std_
        self.intercept_ = float(lr.intercept_[0] - self.coef_ @ self.mean_)
        return self

    def proba(self, X: np.ndarray) -> np.ndarray:
        z = np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))

    def state(self) -> dict:
        """{network.0.weight (2, k), network.0.bias (2,)} float32 tensors."""
        import torch

        # logits (-z/2, z/2): softmax(...)[1] = sigmoid(z), the runtime's reading of any head
        w = torch.as_tensor(np.stack([-self.coef_ / 2, self.coef_ / 2]), dtype=torch.float32)
        b = torch.as_tensor([-self.intercept_ / 2, self.intercept_ / 2], dtype=torch.float32)
        return {"network.0.weight": w.contiguous(), "network.0.bias": b}


def training_set(A, P, points, y, rows, cuts, ramp: float | None, extra=None,
                 harmful_min: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, w) of `rows`: finished answers, and their prefixes at `cuts` answer tokens (a cut
    past an answer's end is left out) with the answer's label; a harmful prefix of t tokens
    weighs min(1, t / ramp) (1 when ramp is None) and is left out when t < harmful_min (its
    first tokens are often still harmless); a safe prefix weighs 1. extra: None or (X (m, k), y (m,)) more rows of weight 1
    (the prompt-level rows' text pools)."""
    X, Y, W = [A[rows]], [y[rows]], [np.ones(len(rows))]
    if extra is not None and len(extra[1]):
        X.append(np.asarray(extra[0], dtype=np.float32))
        Y.append(np.asarray(extra[1], dtype=np.int64))
        W.append(np.ones(len(extra[1])))
    for i in rows:
        keep = [j for j, t in enumerate(points[i]) if t in cuts]
        if keep:
            t = np.asarray(points[i])[keep]
            X.append(P[i][keep].astype(np.float32))
            Y.append(np.full(len(keep), y[i]))
            w = np.ones(len(keep))
            if y[i] == 1:
                w = np.where(t < harmful_min, 0.0, np.minimum(1.0, t / ramp) if ramp else 1.0)
            W.append(w)
    X, Y, W = np.concatenate(X), np.concatenate(Y), np.concatenate(W)
    ok = np.isfinite(X).all(axis=1) & (W > 0)
    return X[ok], Y[ok], W[ok]


def oof_streams(cfg: dict, A, P, points, y, g, seed: int, extra=None) -> tuple[list, np.ndarray]:
    """Out-of-fold streams: each row's prefixes scored by the head of the folds that did not
    train on it. Returns ([(positions, scores)] per row, finished-answer scores (n,))."""
    from sklearn.model_selection import StratifiedKFold

    streams: list = [None] * len(y)
    final = np.zeros(len(y))
    strata = g * 2 + y
    n_folds = max(2, min(int(cfg["n_folds"]), int(np.bincount(strata).min())))  # the run's folds
    for tr, te in StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(A, strata):
        head = LogisticHead(cfg["answer_c"], seed).fit(*training_set(A, P, points, y, tr, set(cfg["answer_cuts"]),
                                                                     cfg["answer_ramp_tokens"], extra,
                                                                     int(cfg.get("answer_harmful_min_tokens") or 0)))
        final[te] = head.proba(A[te])
        for i in te:
            streams[i] = (np.asarray(points[i]), head.proba(P[i].astype(np.float32)))
    return streams, final


# ----------------------------------------------------------------- rule and threshold

def choose_rule(cfg: dict, streams: list, y: np.ndarray) -> tuple[dict, list]:
    """The stream rule and threshold for `stream_target_false_alarm` on the safe streams: the
    configured debounce / min answer tokens / EMA, or, for those set to null, the grid value
    with the highest detection there (ties: the first, simplest). Returns (rule, table)."""
    from siren.runtime.stream_rules import StreamRule, stream_peak, threshold_for_false_alarm

    target = float(cfg["target_false_alarm"])
    fixed = (cfg.get("debounce"), cfg.get("min_answer_tokens"), cfg.get("ema"))
    grid = [(k, m, e) for k, m, e in RULE_GRID
            if (fixed[0] is None or k == fixed[0]) and (fixed[1] is None or m == fixed[1])]
    if fixed[0] is not None and fixed[1] is not None:
        grid = [(int(fixed[0]), int(fixed[1]), fixed[2])]
    elif fixed[2] is not None:
        grid = [(k, m, fixed[2]) for k, m, _e in grid]
    grid = list(dict.fromkeys(grid)) or [(int(fixed[0] or 1), int(fixed[1] or 0), fixed[2])]
    safe = [s for s, yy in zip(streams, y) if yy == 0]
    harmful = [s for s, yy in zip(streams, y) if yy == 1]
    table = []
    for k, m, e in grid:
        rule = StreamRule(0.5, int(k), int(m), e)
        thr = min(1.0, threshold_for_false_alarm(safe, rule, target))
        det = float(np.mean([stream_peak(p, s, rule) >= thr for p, s in harmful])) if harmful else math.nan
        fa = float(np.mean([stream_peak(p, s, rule) >= thr for p, s in safe]))
        table.append({"debounce": int(k), "min_answer_tokens": int(m), "ema": e, "threshold": float(thr),
                      "detection": det, "false_alarm": fa})
    best = max(table, key=lambda r: (round(r["detection"], 6), -table.index(r)))
    return best, table


# ----------------------------------------------------------------- the stage

def wanted(cfg: dict) -> bool:
    return str(cfg.get("answer_head") or "none") != "none"


def check_answer_config(cfg: dict) -> None:
    """Bad values named before any data or backbone loads."""
    kind = str(cfg.get("answer_head") or "none")
    if kind not in ("logistic", "shared", "none"):
        raise SirenError(f"answer_head must be logistic, shared or none, got {kind!r}")
    if kind == "none":
        return
    cuts = cfg.get("answer_cuts") or []
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in cuts):
        raise SirenError(f"answer_cuts must be answer-token counts >= 1, got {cfg['answer_cuts']!r}")
    w = cfg.get("answer_main_weight")
    if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1):
        raise SirenError(f"answer_main_weight must be a number in [0, 1] (0: the answer head alone), got {w!r}")
    for key in ("answer_ramp_tokens", "answer_c"):
        if not (isinstance(cfg.get(key), (int, float)) and cfg[key] > 0) and not (key == "answer_ramp_tokens" and cfg.get(key) is None):
            raise SirenError(f"{key} must be a number > 0, got {cfg.get(key)!r}")
    t = cfg.get("target_false_alarm")
    if not (isinstance(t, (int, float)) and 0 <= t <= 1):
        raise SirenError(f"target_false_alarm must be a fraction in [0, 1], got {t!r}")
    from siren.runtime.stream_rules import StreamRule

    deb, mint = cfg.get("debounce"), cfg.get("min_answer_tokens")
    StreamRule(0.5, deb, mint, cfg.get("ema"))  # its checks (None: configs/defaults.yaml's)


def main_cv_folds(ids, y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> dict:
    """{row id: CV fold} of the main head's search (`siren.pipeline.tune.cv_folds` over its
    train + validation rows, in the order they were stacked)."""
    from siren.pipeline.tune import cv_folds

    fold = np.zeros(len(y), dtype=np.int64)
    for f, (_tr, held) in enumerate(cv_folds(np.asarray(y), np.asarray(groups), int(n_folds), int(seed))):
        fold[held] = f
    return dict(zip((str(i) for i in ids), fold.tolist()))


def main_oof_streams(main_head, main_folds: dict | None, ids: list, P: list) -> list | None:
    """Per row the main head's out-of-fold scores of its answer prefixes: the main head is a CV
    fold ensemble (`final_head: ensemble`), and its head i never trained on fold i's rows. None
    when there are no folds, a row has none, or the head is not an ensemble of that many heads."""
    from siren.mlp import predict_proba_head
    from siren.pipeline.head import split_ensemble

    if not main_folds or any(i not in main_folds for i in ids):
        return None
    try:
        heads = split_ensemble(main_head, max(main_folds.values()) + 1)
    except (ValueError, AttributeError):
        return None
    fold = np.array([main_folds[i] for i in ids])
    out: list = [None] * len(ids)
    for f, head in enumerate(heads):
        rows = np.nonzero(fold == f)[0]
        if not len(rows):
            continue
        scores = predict_proba_head(head, np.concatenate([P[i] for i in rows]).astype(np.float32)).astype(np.float64)
        for i, part in zip(rows, np.split(scores, np.cumsum([len(P[i]) for i in rows])[:-1])):
            out[i] = part
    return out


def fit_answer_stage(cfg: dict, selection: dict, weights: np.ndarray, pooling: str, split_kw: dict,
                     main_head, seed: int, text_rows=None, main_folds: dict | None = None) -> AnswerFit | None:
    """Stage `answer`: None when `answer_head` is none or no training row has a response.
    text_rows: (Z (n, k), y (n,), dataset index (n,)), the main head's train + validation inputs;
    with `answer_prompt_rows`, those of datasets without responses join the answer head's rows.
    main_folds: {row id: CV fold} when the main head is that CV's fold ensemble (`main_cv_folds`):
    then the shared head and the blend with the main head (`answer_main_weight`) are judged on
    out-of-fold scores; without it, a blend is not fitted and `shared` is judged in-sample."""
    if not wanted(cfg):
        return None
    pairs, y, g, _val, ids = response_rows(list(cfg["datasets"]), split_kw)
    if len(pairs) == 0 or len(np.unique(y)) < 2:
        log("answer head: no response-level training rows with both labels: none fitted")
        return None
    extra = None
    if cfg.get("answer_prompt_rows") and text_rows is not None:
        prompt_level = np.setdiff1d(np.arange(len(cfg["datasets"])), np.unique(g))
        keep = np.isin(text_rows[2], prompt_level)
        extra = (np.asarray(text_rows[0][keep], dtype=np.float32), np.asarray(text_rows[1][keep]))
    features = _layer_features(cfg, pooling)
    batch_tokens = cfg.get("batch_tokens") or default_batch_tokens(next(features.model.parameters()).device)
    A, P, points = answer_features(features, pairs, selection, weights, pooling, batch_tokens)
    del features
    ok = np.nonzero(np.isfinite(A).all(axis=1))[0]   # answers truncated away have no pool
    A, y, g = A[ok], y[ok], g[ok]
    P, points, ids = [P[i] for i in ok], [points[i] for i in ok], [str(ids[i]) for i in ok]
    kind = str(cfg["answer_head"])
    w = float(cfg.get("answer_main_weight") or 0.0) if kind == "logistic" else 0.0
    main = main_oof_streams(main_head, main_folds, ids, P) if (kind == "shared" or w > 0) else None
    if w > 0 and main is None:
        log("answer head: no out-of-fold main head (final_head is not a fold ensemble): answer_main_weight 0")
        w = 0.0
    if kind == "shared":
        from siren.mlp import predict_proba_head

        streams = [(np.asarray(p), main[i] if main is not None else predict_proba_head(main_head, x.astype(np.float32)))
                   for i, (p, x) in enumerate(zip(points, P))]
        head = None
    else:
        streams, _final = oof_streams(cfg, A, P, points, y, g, seed, extra)
        if w > 0:
            streams = [(p, (1.0 - w) * s + w * m) for (p, s), m in zip(streams, main)]
        head = LogisticHead(cfg["answer_c"], seed).fit(*training_set(
            A, P, points, y, np.arange(len(y)), set(cfg["answer_cuts"]), cfg["answer_ramp_tokens"], extra,
            int(cfg.get("answer_harmful_min_tokens") or 0)))
    rule, table = choose_rule(cfg, streams, y)
    decision, decision_source = finished_threshold(cfg, streams, y, g)
    log(f"answer head ({kind}) on {len(y)} response rows: threshold {rule['threshold']:.3f}, debounce "
        f"{rule['debounce']}, min answer tokens {rule['min_answer_tokens']}, ema {rule['ema']}: out-of-fold "
        f"stream false alarms {rule['false_alarm']:.3f}, detection {rule['detection']:.3f}")
    summary = {"kind": kind, "rows": int(len(y)), "prompt_level_rows": 0 if extra is None else int(len(extra[1])),
               "cuts": list(cfg["answer_cuts"]), "ramp_tokens": cfg["answer_ramp_tokens"],
               "harmful_min_tokens": cfg.get("answer_harmful_min_tokens"),
               "C": cfg["answer_c"], "main_weight": w, "main_out_of_fold": main is not None,
               "target_false_alarm": cfg["target_false_alarm"], "chosen": rule,
               "decision_threshold": decision, "decision_threshold_source": decision_source,
               "rule_table": table, "chosen_on": "out-of-fold streams of train + validation response rows"}
    return AnswerFit(head.state() if head is not None else None, int(A.shape[1]), float(rule["threshold"]),
                     {k: rule[k] for k in ("debounce", "min_answer_tokens", "ema")}, summary, w, decision)


def _layer_features(cfg: dict, pooling: str):
    from siren.backbones import load_backbone
    from siren.features import LayerFeatures

    bb = load_backbone(cfg["model"], device=cfg.get("device"), dtype=cfg.get("dtype"),
                       trust_remote_code=bool(cfg.get("trust_remote_code")))
    return LayerFeatures(bb.model, bb.tokenizer, pooling_types=(pooling,), max_length=int(cfg["max_length"]))


def save_answer_head(folder: Path, fit: AnswerFit) -> None:
    """answer_head.safetensors + `siren.answer_head` into the guard folder's siren_config.json."""
    from safetensors.torch import save_file

    from siren.artifact import CONFIG_NAME, load_guard_config
    from siren.fileio import atomic_write_json, atomic_write_with

    folder = Path(folder)
    config = load_guard_config(folder)
    entry = {"weights": None, "mlp": None, "shared": fit.state is None, "threshold": float(fit.threshold),
             "decision_threshold": float(fit.threshold if fit.decision_threshold is None else fit.decision_threshold),
             "stream": {"debounce": int(fit.rule["debounce"]), "min_answer_tokens": int(fit.rule["min_answer_tokens"]),
                        "ema": fit.rule["ema"]}, "main_weight": float(fit.main_weight)}
    if fit.state is not None:
        atomic_write_with(folder / ANSWER_WEIGHTS_NAME,
                          lambda tmp: save_file(fit.state, tmp, metadata={"format": "pt"}))
        entry["weights"] = ANSWER_WEIGHTS_NAME
        entry["mlp"] = {"input_dim": fit.input_dim, "layer_dims": [], "dropout_rates": [], "num_classes": 2}
    config.setdefault("siren", {})["answer_head"] = entry
    atomic_write_json(folder / CONFIG_NAME, config)
