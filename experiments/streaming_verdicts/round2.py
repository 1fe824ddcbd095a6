"""Round 2 of the streaming-verdicts experiment: CV on the main head's own folds.

The offline-six guard's head is a fold ensemble (`final_head: ensemble`): its K fold heads sit
block-diagonally in one MLP, and fold head k never trained on CV fold k (the folds are
`siren.pipeline.tune.cv_folds` over the train + validation rows of the six datasets, in the
order `siren train` stacks them). So each response row's out-of-fold score under "the main head
on the answer pool" (shared) is a fair CV estimate, and every other variant is refitted on the
same folds. Variants, each with whole-prefix means or mean over the last W answer tokens:

- lr:      the first round's answer head (answer LR + prompt-level rows, cuts 8/16/32/64,
           harmful prefixes under 16 tokens left out);
- shared:  fold head k on fold k's answer pools and prefixes;
- mean:    the mean of the two probabilities;
- lr_aw:   LR on [answer pool, whole-text pool] (the whole-text pool of a prefix is exact from
           the prompt pool and the answer prefix mean: (n_p * prompt + t * answer_t) / (n_p + t)).

Windows: the mean over the last W answer tokens at t is (t * mean_t - t' * mean_t') / (t - t')
with t' the last scored point <= t - W (t' = t - W exactly at multiples of 4; at the answer's
last token the window is W..W+3 tokens); before W tokens it is the prefix mean. A finished
answer's verdict under windows is the max of its window scores (= the stream under debounce 1).

    python experiments/streaming_verdicts/round2.py --pools WORK/pools --guard GUARD \\
        --features CACHE/smollm2-135m --out WORK/round2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.streaming_verdicts.common import DATASETS, Logistic, Pools, Projection, detection_at_fa  # noqa: E402
from experiments.streaming_verdicts.run import PROMPT_LEVEL, C, load_split, merge, streams_of  # noqa: E402
from siren.metrics import macro_f1  # noqa: E402

TARGET_FA = 0.15
CUTS, HARM_MIN = (8, 16, 32, 64), 16
WINDOWS = (None, 16, 32, 64)


# ----------------------------------------------------------------- the main head's folds

def main_folds(features: Path, datasets: list[str], n_folds: int, seed: int) -> dict:
    """{row id: CV fold} of `siren train`'s head search (train rows of every dataset, then
    validation rows; cv_folds over (dataset, label) strata)."""
    from siren.pipeline.tune import cv_folds

    ids, y, g = [], [], []
    for split in ("train", "validation"):
        for gi, ds in enumerate(datasets):
            folder = features / ds / split / "mlp_mean"
            ids += [str(x) for x in np.load(folder / "ids.npy")]
            y.append(np.load(folder / "labels.npy").astype(np.int64))
            g.append(np.full(len(y[-1]), gi))
    fold = np.zeros(len(ids), dtype=int)
    for f, (_tr, va) in enumerate(cv_folds(np.concatenate(y), np.concatenate(g), n_folds, seed)):
        fold[va] = f
    return dict(zip(ids, fold.tolist()))


def fold_heads(head, k: int) -> list:
    """The K fold heads of an `ensemble_heads` head. The output bias is stored as the folds'
    mean (each fold's own is gone), so every fold head gets that mean bias."""
    import torch

    from siren.mlp import MLPHead

    lin = [m for m in head.network if isinstance(m, torch.nn.Linear)]
    out = []
    for f in range(k):
        state, keys = {}, [n for n, m in head.network.named_children() if isinstance(m, torch.nn.Linear)]
        for j, (key, m) in enumerate(zip(keys, lin)):
            r, c = m.out_features // k, m.in_features // k
            if j == 0:
                w, b = m.weight[f * r:(f + 1) * r], m.bias[f * r:(f + 1) * r]
            elif j < len(lin) - 1:
                w, b = m.weight[f * r:(f + 1) * r, f * c:(f + 1) * c], m.bias[f * r:(f + 1) * r]
            else:
                w, b = m.weight[:, f * c:(f + 1) * c] * k, m.bias
            state[f"network.{key}.weight"], state[f"network.{key}.bias"] = w.detach().clone(), b.detach().clone()
        dims = [x // k for x in head.layer_dims]
        out.append(MLPHead.from_state(head.input_dim, dims, head.dropout_rates, state, head.num_classes))
    return out


def proba(head, X, chunk: int = 4096) -> np.ndarray:
    from siren.mlp import predict_proba_head

    return np.concatenate([predict_proba_head(head, np.asarray(X[s:s + chunk], np.float32)).astype(np.float64)
                           for s in range(0, len(X), chunk)]) if len(X) else np.zeros(0)


# ----------------------------------------------------------------- features of a variant

def windowed(D: dict, W: int | None) -> np.ndarray:
    """Per prefix point the mean over its last W answer tokens (the prefix mean when W is None
    or the prefix is shorter than W)."""
    P, rows, t = D["answer_pref"], D["pref_row"], D["pref_t"].astype(np.int64)
    if W is None:
        return P
    out = P.copy()
    starts = np.searchsorted(rows, np.arange(len(D["y"]) + 1))
    for i in range(len(D["y"])):
        a, b = starts[i], starts[i + 1]
        ti = t[a:b]
        for j in range(a, b):
            if t[j] < W:
                continue
            back = np.nonzero(ti <= t[j] - W)[0]
            if len(back) == 0:
                continue
            jj, tp = a + back[-1], ti[back[-1]]
            out[j] = (t[j] * P[j] - tp * P[jj]) / (t[j] - tp)
    return out


def with_whole(D: dict, X_ans: np.ndarray, idx: np.ndarray, pref: bool) -> np.ndarray:
    """[answer pool, whole-text pool] of rows `idx` (pref False) or prefix points `idx` (pref
    True); X_ans: their answer-side features (len(idx), k)."""
    if not pref:
        return np.concatenate([X_ans, D["whole"][idx]], axis=1)
    r, t = D["pref_row"][idx], D["pref_t"][idx].astype(np.float32)[:, None]
    npr = D["n_prompt"][r].astype(np.float32)[:, None]
    whole = (npr * D["prompt"][r] + t * D["answer_pref"][idx]) / (npr + t)
    return np.concatenate([X_ans, whole], axis=1)


def train_rows(D: dict, rows: np.ndarray, extra, both: bool) -> tuple:
    """The first round's chosen training set (finished answers, prefixes at CUTS with harmful
    ones under HARM_MIN tokens left out, prompt-level rows) of `rows`."""
    keep = np.isin(D["pref_row"], rows) & np.isin(D["pref_t"], CUTS)
    lab = D["y"][D["pref_row"][keep]]
    keep[np.nonzero(keep)[0][(lab == 1) & (D["pref_t"][keep] < HARM_MIN)]] = False
    if both:
        kp = np.nonzero(keep)[0]
        X = [with_whole(D, D["answer"][rows], rows, False), with_whole(D, D["answer_pref"][kp], kp, True)]
        if extra is not None:
            X.append(np.concatenate([extra[0], extra[0]], axis=1))
    else:
        X = [D["answer"][rows], D["answer_pref"][keep]] + ([extra[0]] if extra is not None else [])
    y = [D["y"][rows], D["y"][D["pref_row"][keep]]] + ([extra[1]] if extra is not None else [])
    X, y = np.concatenate(X), np.concatenate(y)
    return X, y, np.ones(len(y))


def prompt_rows(features: Path, proj, fold_of: dict) -> tuple:
    """Prompt-level datasets' train + validation text pools and their main-head CV fold."""
    Z, y, f = [], [], []
    for ds in PROMPT_LEVEL:
        for split in ("train", "validation"):
            folder = features / ds / split / "mlp_mean"
            X = np.load(folder / "features.npy", mmap_mode="r")
            Z.append(proj(X.reshape(len(X), -1)))
            y.append(np.load(folder / "labels.npy").astype(np.int64))
            f.append(np.array([fold_of[str(i)] for i in np.load(folder / "ids.npy")]))
    return np.concatenate(Z), np.concatenate(y), np.concatenate(f)


def load(args, proj, fold_of: dict) -> dict:
    kinds = ("answer", "answer_pref", "whole", "prompt")
    D = merge(load_split(args, proj, "train", kinds), load_split(args, proj, "validation", kinds))
    ids, npr = [], []
    for split in ("train", "validation"):
        for ds in DATASETS:
            rows = Pools.open(Path(args.pools) / ds / split).rows
            ids += rows["id"]
            npr += rows["n_prompt"]
    D["id"], D["n_prompt"] = np.asarray(ids), np.asarray(npr)
    D["fold"] = np.array([fold_of[i] for i in ids])
    return D


# ----------------------------------------------------------------- CV

def oof_scores(D: dict, heads: list, extra, k: int) -> dict:
    """{variant: {W: (finished (n,), prefix (m,))}} out-of-fold on the main head's folds."""
    n = len(D["y"])
    wins = {W: windowed(D, W) for W in WINDOWS}
    out = {v: {W: (np.zeros(n), np.zeros(len(D["pref_row"]))) for W in WINDOWS} for v in ("lr", "shared", "lr_aw")}
    for f in range(k):
        tr, te = np.nonzero(D["fold"] != f)[0], np.nonzero(D["fold"] == f)[0]
        ex = None if extra is None else (extra[0][extra[2] != f], extra[1][extra[2] != f])
        pm = np.isin(D["pref_row"], te)
        lr = Logistic(C=C, seed=42).fit(*train_rows(D, tr, ex, both=False))
        aw = Logistic(C=C, seed=42).fit(*train_rows(D, tr, ex, both=True))
        for W in WINDOWS:
            Xp = wins[W][pm]
            for name, score_final, score_pref in (
                    ("lr", lambda: lr.proba(D["answer"][te]), lambda: lr.proba(Xp)),
                    ("shared", lambda: proba(heads[f], D["answer"][te]), lambda: proba(heads[f], Xp)),
                    ("lr_aw", lambda: aw.proba(with_whole(D, D["answer"][te], te, False)),
                     lambda: aw.proba(with_whole(D, Xp, np.nonzero(pm)[0], True)))):
                out[name][W][0][te] = score_final()
                out[name][W][1][pm] = score_pref()
        print(f"fold {f} done", flush=True)
    out["mean"] = {W: ((out["lr"][W][0] + out["shared"][W][0]) / 2, (out["lr"][W][1] + out["shared"][W][1]) / 2)
                   for W in WINDOWS}
    return out


def metrics(D: dict, final: np.ndarray, pref: np.ndarray, windows: bool) -> dict:
    """CV figures of one (variant, W): pooled over folds, and per fold for the spread."""
    y, g, n = D["y"], D["g"], len(D["y"])
    streams = streams_of(pref, D["pref_row"], D["pref_t"], n)
    peak = np.array([s.max() if len(s) else 0.0 for _p, s in streams])
    fin = peak if windows else final        # a finished answer under windows: the max of its windows
    res = {"f1_finished": mean_f1(y, (fin >= 0.5).astype(int), g),
           "f1_finished_mean_pool": mean_f1(y, (final >= 0.5).astype(int), g)}
    thr, det = detection_at_fa(streams, y, TARGET_FA, 1, 0, None)
    fa = float((peak[y == 0] >= thr).mean())
    res.update(threshold_15fa=thr, detection_15fa=det, false_alarm=fa,
               tax_vs_mean_pool=fa - float((final[y == 0] >= thr).mean()),
               f1_finished_at_thr=mean_f1(y, (fin >= thr).astype(int), g))
    per = []
    for f in np.unique(D["fold"]):
        m = D["fold"] == f
        sub = [s for s, k in zip(streams, m) if k]
        per.append((mean_f1(y[m], (fin[m] >= 0.5).astype(int), g[m]), detection_at_fa(sub, y[m], TARGET_FA, 1, 0, None)[1]))
    per = np.array(per)
    res.update(f1_per_fold=per[:, 0].tolist(), detection_per_fold=per[:, 1].tolist())
    return res


def mean_f1(y, pred, g) -> float:
    return float(np.mean([macro_f1(y[g == i], pred[g == i]) for i in np.unique(g)]))


def check_fold_heads(features: Path, datasets: list[str], proj, heads: list, fold_of: dict) -> float:
    """The fold heads' CV F1 on every dataset's train + validation rows (the search's own
    figure, mean over folds of the mean-over-datasets macro-F1 at 0.5): checks the split."""
    per_fold = {f: ([], [], []) for f in range(len(heads))}
    for gi, ds in enumerate(datasets):
        for split in ("train", "validation"):
            folder = features / ds / split / "mlp_mean"
            X = np.load(folder / "features.npy", mmap_mode="r")
            Z = proj(X.reshape(len(X), -1))
            y = np.load(folder / "labels.npy").astype(np.int64)
            f = np.array([fold_of[str(i)] for i in np.load(folder / "ids.npy")])
            for k in per_fold:
                m = f == k
                per_fold[k][0].append(proba(heads[k], Z[m]))
                per_fold[k][1].append(y[m])
                per_fold[k][2].append(np.full(m.sum(), gi))
    vals = []
    for p, y, g in per_fold.values():
        p, y, g = np.concatenate(p), np.concatenate(y), np.concatenate(g)
        vals.append(mean_f1(y, (p >= 0.5).astype(int), g))
    return float(np.mean(vals))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pools", required=True)
    p.add_argument("--guard", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--skip_check", action="store_true")
    a = p.parse_args()
    from siren.artifact import load_guard_config, load_head

    t0 = time.time()
    config = load_guard_config(a.guard)
    results = json.loads((Path(a.guard) / "results.json").read_text())
    cfg = results["config"]
    proj = Projection(config, int(config["siren"]["hidden_size"]))
    head = load_head(a.guard)
    k = int(cfg["n_folds"])
    heads = fold_heads(head, k)
    fold_of = main_folds(Path(a.features), list(cfg["datasets"]), k, int(cfg["seed"]))
    out = {"main_head_cv_f1_reported": results["chosen"]["cv_f1"]}
    if not a.skip_check:
        out["fold_heads_cv_f1_recomputed"] = check_fold_heads(Path(a.features), list(cfg["datasets"]), proj, heads, fold_of)
        print(f"fold heads' CV F1 recomputed {out['fold_heads_cv_f1_recomputed']:.4f} "
              f"(search reported {out['main_head_cv_f1_reported']:.4f}) [{time.time() - t0:.0f} s]", flush=True)
    D = load(a, proj, fold_of)
    extra = prompt_rows(Path(a.features), proj, fold_of)
    print(f"loaded {len(D['y'])} rows, {len(D['pref_row'])} prefixes [{time.time() - t0:.0f} s]", flush=True)
    scores = oof_scores(D, heads, extra, k)
    table = []
    for v in ("lr", "shared", "mean", "lr_aw"):
        for W in WINDOWS:
            r = {"variant": v, "window": W, **metrics(D, *scores[v][W], windows=W is not None)}
            table.append(r)
            print(f"{v:7s} W={str(W):4s} F1 {r['f1_finished']:.4f} (mean pool {r['f1_finished_mean_pool']:.4f}) "
                  f"det@15 {r['detection_15fa']:.3f} thr {r['threshold_15fa']:.3f} tax(mean pool) {r['tax_vs_mean_pool']:+.3f} "
                  f"F1 per fold {np.round(r['f1_per_fold'], 3).tolist()} det per fold {np.round(r['detection_per_fold'], 3).tolist()}",
                  flush=True)
    # the blend's weight on the main head (w = 0: the answer LR alone, 1: shared), whole-prefix means
    out["blend_weights"] = []
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        fin = (1 - w) * scores["lr"][None][0] + w * scores["shared"][None][0]
        pre = (1 - w) * scores["lr"][None][1] + w * scores["shared"][None][1]
        r = {"main_weight": w, **metrics(D, fin, pre, windows=False)}
        out["blend_weights"].append(r)
        print(f"blend w={w:.2f} F1 {r['f1_finished']:.4f} det@15 {r['detection_15fa']:.3f} thr {r['threshold_15fa']:.3f} "
              f"F1 per fold {np.round(r['f1_per_fold'], 3).tolist()} det per fold {np.round(r['detection_per_fold'], 3).tolist()}",
              flush=True)
    today = np.zeros(len(D["y"]))
    for f in range(k):
        te = D["fold"] == f
        today[te] = proba(heads[f], D["whole"][te])
    out["today_whole_text_cv_f1"] = mean_f1(D["y"], (today >= 0.5).astype(int), D["g"])
    out["today_whole_text_cv_f1_per_fold"] = [mean_f1(D["y"][D["fold"] == f], (today[D["fold"] == f] >= 0.5).astype(int),
                                                      D["g"][D["fold"] == f]) for f in range(k)]
    print(f"today (main head on whole texts, out of fold): CV F1 {out['today_whole_text_cv_f1']:.4f} "
          f"per fold {np.round(out['today_whole_text_cv_f1_per_fold'], 3).tolist()}", flush=True)
    out["table"] = table
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "round2.json").write_text(json.dumps(out, indent=1, default=float))
    np.savez(Path(a.out) / "oof.npz", **{f"{v}_{W}_{i}": scores[v][W][i] for v in scores for W in WINDOWS for i in (0, 1)})
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
