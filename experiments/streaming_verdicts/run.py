"""The streaming-verdicts experiment's one entry point (reports/streaming_verdicts/ quotes it).

Reads pools.py's output (--pools), today's guard (--guard: its selected neurons, layer weights
and head; its eval_results.json), and its feature cache (--features: prompt-level rows' text
pools). Then:
1. CV (3 folds on train + validation response rows, stratified by dataset and label; test rows
   never): how the answer verdict is modelled (shared main head / logistic answer head, with
   prompt-level rows or not, prefix cut points and the labelling of harmful prefixes);
2. on the chosen head's out-of-fold streams: the stream rule (debounce, min answer tokens, EMA)
   and the threshold for the target false-alarm rate;
3. the final head on all train + validation rows, scored on the test rows beside today's guard
   (whole text over prompt + answer prefix, and the answer alone): finished-answer macro-F1,
   streaming false alarms, detection, tax, tokens to detection; the trade-off plot.

    python experiments/streaming_verdicts/run.py --pools WORK/pools --guard GUARD \\
        --features CACHE/smollm2-135m --out reports/streaming_verdicts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.streaming_verdicts.common import (  # noqa: E402
    DATASETS, Logistic, Pools, Projection, curve, detection_at_fa, stream_summary)
from siren.metrics import macro_f1  # noqa: E402

PROMPT_LEVEL = ("toxic_chat", "openai_moderation", "aegis", "wildguard")
TARGET_FA = 0.15


def load_split(args, proj, split: str, kinds) -> dict:
    """Both datasets' rows of one split, concatenated: Z per kind, y, group, prefix index."""
    out = {k: [] for k in kinds}
    y, g, prow, pt, rrow, rt = [], [], [], [], [], []
    offset = 0
    for gi, ds in enumerate(DATASETS):
        P = Pools.open(Path(args.pools) / ds / split)
        for k in kinds:
            out[k].append(proj(P.raw(k)))
        y.append(P.y)
        g.append(np.full(len(P.y), gi))
        prow.append(np.asarray(P.rows["pref_row"]) + offset)
        pt.append(np.asarray(P.rows["pref_t"]))
        if "resp_row" in P.rows:
            rrow.append(np.asarray(P.rows["resp_row"]) + offset)
            rt.append(np.asarray(P.rows["resp_t"]))
        offset += len(P.y)
    d = {k: np.concatenate(v) for k, v in out.items()}
    d.update(y=np.concatenate(y), g=np.concatenate(g), pref_row=np.concatenate(prow), pref_t=np.concatenate(pt))
    if rrow:
        d.update(resp_row=np.concatenate(rrow), resp_t=np.concatenate(rt))
    return d


def prompt_level_rows(args, proj) -> tuple[np.ndarray, np.ndarray]:
    """Prompt-level datasets' train + validation text pools from the guard's feature cache."""
    Z, y = [], []
    for ds in PROMPT_LEVEL:
        for split in ("train", "validation"):
            folder = Path(args.features) / ds / split / "mlp_mean"
            X = np.load(folder / "features.npy", mmap_mode="r")
            Z.append(proj(X.reshape(len(X), -1)))
            y.append(np.load(folder / "labels.npy"))
    return np.concatenate(Z), np.concatenate(y).astype(np.int64)


def streams_of(scores: np.ndarray, rows: np.ndarray, t: np.ndarray, n: int) -> list:
    """[(positions, scores)] per row from flat prefix scores."""
    order = np.argsort(rows, kind="stable")
    bounds = np.searchsorted(rows[order], np.arange(n + 1))
    return [(t[order[a:b]], scores[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]


def mean_f1(y, pred, g) -> float:
    return float(np.mean([macro_f1(y[g == i], pred[g == i]) for i in np.unique(g)]))


# ----------------------------------------------------------------- training sets of a variant

def training_set(D: dict, rows: np.ndarray, v: dict, extra) -> tuple:
    """(X, y, w) of a variant: finished answers of `rows`, their prefixes at v["cuts"] labelled
    with the answer's label, harmful prefixes weighted by v["harm"] ("same" | "ramp<T>": weight
    min(1, t/T) | "drop<T>": left out below T tokens), and optionally prompt-level rows."""
    pool = v.get("pool", "answer")   # "whole": train on the whole-text pools (today's training), score answers
    X, y, w = [D[pool][rows]], [D["y"][rows]], [np.ones(len(rows))]
    if v["cuts"]:
        keep = np.isin(D["pref_row"], rows) & np.isin(D["pref_t"], v["cuts"])
        t, lab = D["pref_t"][keep], D["y"][D["pref_row"][keep]]
        wt = np.ones(len(t))
        if v["harm"].startswith("ramp"):
            wt = np.where(lab == 1, np.minimum(1.0, t / float(v["harm"][4:])), 1.0)
        elif v["harm"].startswith("drop"):
            wt = np.where((lab == 1) & (t < int(v["harm"][4:])), 0.0, 1.0)
        X.append(D["answer_pref"][keep])
        y.append(lab)
        w.append(wt)
    if v.get("prompt_rows") and extra is not None:
        X.append(extra[0])
        y.append(extra[1])
        w.append(np.ones(len(extra[1])))
    w = np.concatenate(w)
    X, y = np.concatenate(X), np.concatenate(y)
    return X[w > 0], y[w > 0], w[w > 0]


def folds(y, g, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=int)
    for cell in np.unique(g * 2 + y):
        idx = rng.permutation(np.nonzero(g * 2 + y == cell)[0])
        fold[idx] = np.arange(len(idx)) % k
    return fold


def cv_variant(D: dict, v: dict, main_head, extra, k: int, seed: int) -> dict:
    """Out-of-fold finished-answer and prefix scores of a variant, and its CV metrics."""
    n = len(D["y"])
    fold = folds(D["y"], D["g"], k, seed)
    final, pref = np.zeros(n), np.zeros(len(D["pref_row"]))
    for f in range(k):
        tr, te = np.nonzero(fold != f)[0], np.nonzero(fold == f)[0]
        if v["head"] == "shared":
            model = main_head
        elif v["head"] == "mlp":
            model = SmallMLP(v.get("width", 128), v.get("epochs", 20), seed).fit(*training_set(D, tr, v, extra))
        else:
            model = Logistic(C=v.get("C", C), seed=seed).fit(*training_set(D, tr, v, extra))
        final[te] = model.proba(D["answer"][te])
        pm = np.isin(D["pref_row"], te)
        pref[pm] = model.proba(D["answer_pref"][pm])
    streams = streams_of(pref, D["pref_row"], D["pref_t"], n)
    thr, det = detection_at_fa(streams, D["y"], TARGET_FA, 1, 0, None)
    return {"cv_f1_finished": mean_f1(D["y"], (final >= 0.5).astype(int), D["g"]),
            "cv_detection_at_15fa": det, "cv_threshold_15fa": thr, "oof_final": final, "oof_pref": pref}


C = 3e-4   # the logistic heads' inverse L2 strength (standardised inputs): best of 1e-4..1e-2 on CV
VARIANTS = [
    {"name": "shared: main head on the answer pool (main head saw these rows)", "head": "shared", "cuts": [], "harm": "same"},
    {"name": "LR on whole-text pools + prompt-level rows, scores answers", "head": "lr", "cuts": [], "harm": "same",
     "prompt_rows": True, "pool": "whole"},
    {"name": "answer LR", "head": "lr", "cuts": [], "harm": "same"},
    {"name": "answer LR + prompt-level rows", "head": "lr", "cuts": [], "harm": "same", "prompt_rows": True},
    {"name": "MLP(128) answer + prompt-level rows", "head": "mlp", "cuts": [], "harm": "same", "prompt_rows": True},
    {"name": "answer LR + prompt rows, cuts 16/32/64, same label", "head": "lr", "cuts": [16, 32, 64], "harm": "same",
     "prompt_rows": True},
    {"name": "answer LR + prompt rows, cuts 16/32/64, harmful ramp t/32", "head": "lr", "cuts": [16, 32, 64],
     "harm": "ramp32", "prompt_rows": True},
    {"name": "answer LR + prompt rows, cuts 8/16/32/64, harmful ramp t/32", "head": "lr", "cuts": [8, 16, 32, 64],
     "harm": "ramp32", "prompt_rows": True},
    {"name": "answer LR + prompt rows, cuts 8..128, harmful ramp t/32", "head": "lr",
     "cuts": [8, 16, 24, 32, 48, 64, 96, 128], "harm": "ramp32", "prompt_rows": True},
    {"name": "answer LR + prompt rows, cuts 8/16/32/64, harmful < 16 left out", "head": "lr", "cuts": [8, 16, 32, 64],
     "harm": "drop16", "prompt_rows": True},
]


class SmallMLP:
    """One hidden layer, the guard's head trainer (siren.pipeline.head.fit_head; label-balanced,
    fixed epochs); weights only decide which rows count (fit_head has no per-row weights)."""

    def __init__(self, width: int, epochs: int, seed: int):
        self.width, self.epochs, self.seed = width, epochs, seed

    def fit(self, X, y, w):
        from siren.pipeline.head import fit_head

        keep = w >= 0.5
        self.head, _ = fit_head(X[keep], y[keep], layer_dims=[self.width], dropout_rates=[0.2], lr=1e-3,
                                seed=self.seed, max_epochs=self.epochs, batch_size=256)
        return self

    def proba(self, X):
        from siren.mlp import predict_proba_head

        return predict_proba_head(self.head, X).astype(np.float64)


class SavedHead:
    """An answer_head.safetensors (one Linear in the guard's layout) as a scorer."""

    def __init__(self, state):
        self.w = state["network.0.weight"].double().numpy()
        self.b = state["network.0.bias"].double().numpy()

    def proba(self, X):
        z = np.asarray(X, dtype=np.float64) @ self.w.T + self.b
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e[:, 1] / e.sum(axis=1)


def saved_answer_head(folder: str) -> tuple[SavedHead, dict]:
    from siren.artifact import load_guard_config, load_head, read_safetensors

    entry = load_guard_config(folder)["siren"]["answer_head"]
    rule = {**entry["stream"], "threshold": float(entry["threshold"]), "source": "the guard folder",
            "main_weight": float(entry.get("main_weight", 0.0)),
            # a finished answer's threshold (folders before the split: the stream's)
            "decision_threshold": float(entry.get("decision_threshold", entry["threshold"]))}
    head = SavedHead(read_safetensors(Path(folder) / entry["weights"]))
    if rule["main_weight"] > 0:   # the runtime's blend: (1 - w) * answer head + w * main head
        head = Blend(head, MainHead(load_head(folder)), rule["main_weight"])
    return head, rule


class Blend:
    def __init__(self, answer, main, w: float):
        self.answer, self.main, self.w = answer, main, float(w)

    def proba(self, X):
        return (1.0 - self.w) * self.answer.proba(X) + self.w * self.main.proba(X)


class MainHead:
    def __init__(self, head):
        self.head = head

    def proba(self, X):
        from siren.mlp import predict_proba_head

        return predict_proba_head(self.head, X).astype(np.float64)


# ----------------------------------------------------------------- rule, final head, test

RULE_GRID = [(k, m, e) for k in (1, 2, 3) for m in (0, 8, 16) for e in (None, 0.5)]


def choose_rule(streams, y, target: float) -> tuple[list, dict]:
    """Every rule of RULE_GRID at its threshold for `target` false alarms on the out-of-fold
    streams; the chosen one has the highest detection (ties: the earlier, simpler rule)."""
    table = []
    for k, m, e in RULE_GRID:
        thr, det = detection_at_fa(streams, y, target, k, m, e)
        table.append({"debounce": k, "min_answer_tokens": m, "ema": e, "threshold": thr, "detection": det})
    best = max(table, key=lambda r: (round(r["detection"], 4), -table.index(r)))
    return table, best


def side_by_side(T: dict, answer_head, main_head, rule: dict, base_threshold: float, previous=None) -> dict:
    """Test rows: finished-answer F1 and streams of the answer verdict and today's guard;
    previous: None or (head, rule) of an earlier answer verdict, shown beside them."""
    n, y, g = len(T["y"]), T["y"], T["g"]
    a_final = answer_head.proba(T["answer"])
    a_streams = streams_of(answer_head.proba(T["answer_pref"]), T["pref_row"], T["pref_t"], n)
    w_final = main_head.proba(T["whole"])
    w_streams = streams_of(main_head.proba(T["whole_pref"]), T["pref_row"], T["pref_t"], n)
    r_streams = streams_of(main_head.proba(T["resp_pref"]), T["resp_row"], T["resp_t"], n)
    r_final = np.array([s[-1] if len(s) else 0.0 for _p, s in r_streams])
    s_final = main_head.proba(T["answer"])   # reference: the main head on the answer pool (shared)
    s_streams = streams_of(main_head.proba(T["answer_pref"]), T["pref_row"], T["pref_t"], n)
    thr = rule["threshold"]
    out = {"finished_f1": {}}
    for name, scores, t in (("answer_verdict", a_final, thr), ("answer_verdict_at_0.5", a_final, 0.5),
                            ("answer_verdict_at_decision_threshold", a_final, rule.get("decision_threshold", thr)),
                            ("today_whole_text", w_final, base_threshold),
                            ("shared_main_head_on_answer", s_final, base_threshold)):
        pred = (scores >= t).astype(int)
        out["finished_f1"][name] = {ds: macro_f1(y[g == i], pred[g == i]) for i, ds in enumerate(DATASETS)}
        out["finished_f1"][name]["average"] = float(np.mean(list(out["finished_f1"][name].values())))
    if previous is not None:
        p_head, p_rule = previous
        p_final = p_head.proba(T["answer"])
        p_streams = streams_of(p_head.proba(T["answer_pref"]), T["pref_row"], T["pref_t"], n)
        for name, t in (("previous_answer_verdict", p_rule["threshold"]), ("previous_answer_verdict_at_0.5", 0.5)):
            pred = (p_final >= t).astype(int)
            out["finished_f1"][name] = {ds: macro_f1(y[g == i], pred[g == i]) for i, ds in enumerate(DATASETS)}
            out["finished_f1"][name]["average"] = float(np.mean(list(out["finished_f1"][name].values())))
    sub = {}
    for i, ds in list(enumerate(DATASETS)) + [(None, "both")]:
        m = np.ones(n, bool) if i is None else g == i
        pick = lambda st: [s for s, k in zip(st, m) if k]  # noqa: E731
        sub[ds] = {
            "answer_verdict": stream_summary(pick(a_streams), y[m], a_final[m], thr, rule["debounce"],
                                             rule["min_answer_tokens"], rule["ema"]),
            "today_with_prompt": stream_summary(pick(w_streams), y[m], w_final[m], base_threshold, 1, 0, None),
            "today_answer_alone": stream_summary(pick(r_streams), y[m], r_final[m], base_threshold, 1, 0, None),
            "shared_main_head_on_answer": stream_summary(pick(s_streams), y[m], s_final[m], base_threshold, 1, 0, None),
        }
        if previous is not None:
            sub[ds]["previous_answer_verdict"] = stream_summary(
                pick(p_streams), y[m], p_final[m], p_rule["threshold"], p_rule["debounce"], p_rule["min_answer_tokens"],
                p_rule["ema"])
    out["streams"] = sub
    out["curves"] = {"answer_verdict": curve(a_streams, y, rule["debounce"], rule["min_answer_tokens"], rule["ema"]),
                     "answer_verdict_debounce1": curve(a_streams, y, 1, 0, None),
                     "today_with_prompt": curve(w_streams, y, 1, 0, None),
                     "today_answer_alone": curve(r_streams, y, 1, 0, None),
                     "shared_main_head_on_answer": curve(s_streams, y, 1, 0, None)}
    if previous is not None:
        out["curves"]["previous_answer_verdict"] = curve(p_streams, y, p_rule["debounce"], p_rule["min_answer_tokens"],
                                                         p_rule["ema"])
    return out


def plot(path: Path, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5))
    styles = {"answer_verdict": ("answer verdict (blend with the main head), chosen rule", "tab:green"),
              "answer_verdict_debounce1": ("... debounce 1 (the same rule: hidden under it)", "tab:olive"),
              "today_with_prompt": ("today: prompt + answer prefix", "tab:red"),
              "today_answer_alone": ("today: answer prefix alone", "tab:orange"),
              "shared_main_head_on_answer": ("main head on the answer pool (reference)", "tab:blue"),
              "previous_answer_verdict": ("first round's answer verdict (answer LR alone)", "tab:purple")}
    for key, (label, color) in styles.items():
        if key not in res["test"]["curves"]:
            continue
        c = res["test"]["curves"][key]
        ax.plot(c["false_alarm"], c["detection"], color=color, label=label)
    for key, color in (("answer_verdict", "tab:green"), ("today_with_prompt", "tab:red"),
                       ("today_answer_alone", "tab:orange"), ("previous_answer_verdict", "tab:purple")):
        if key not in res["test"]["streams"]["both"]:
            continue
        s = res["test"]["streams"]["both"][key]
        ax.plot([s["false_alarm"]], [s["detection"]], "o", color=color)
    ax.axvline(0.15, ls=":", color="gray")
    ax.axhline(0.80, ls=":", color="gray")
    ax.set_xlabel("false alarms: safe test streams flagged")
    ax.set_ylabel("detection: harmful test streams flagged")
    ax.set_title("beavertails + safe_rlhf test streams (every 4 answer tokens)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge(a: dict, b: dict) -> dict:
    """Rows of split a then split b (prefix row indices shifted)."""
    n = len(a["y"])
    out = {k: np.concatenate([a[k], b[k] + (n if k == "pref_row" else 0)]) for k in a if k in b}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pools", required=True)
    p.add_argument("--guard", required=True)
    p.add_argument("--features", required=True, help="the guard's feature cache of the backbone (prompt-level rows)")
    p.add_argument("--out", required=True)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--variants", nargs="*", type=int, help="indices into VARIANTS (default: all)")
    p.add_argument("--previous_guard", help="an earlier guard folder with an answer head, tested beside --answer_guard")
    p.add_argument("--answer_guard", help="a guard folder with an answer head (add_answer_head.py / siren train): "
                                          "its head, threshold and rule are the ones tested")
    a = p.parse_args()
    from siren.artifact import load_guard_config, load_head

    started = time.time()
    config = load_guard_config(a.guard)
    hidden = int(config["siren"]["hidden_size"])
    proj, main_head = Projection(config, hidden), MainHead(load_head(a.guard))
    kinds = ("answer", "answer_pref", "whole")
    D = merge(load_split(a, proj, "train", kinds), load_split(a, proj, "validation", kinds))
    extra = prompt_level_rows(a, proj)
    print(f"loaded {len(D['y'])} train+validation response rows ({len(D['pref_row'])} prefixes), "
          f"{len(extra[1])} prompt-level rows, k={D['answer'].shape[1]} in {time.time() - started:.0f} s", flush=True)
    table, runs = [], {}
    for i in (a.variants if a.variants else range(len(VARIANTS))):
        v = VARIANTS[i]
        r = cv_variant(D, v, main_head, extra, a.folds, a.seed)
        runs[i] = r
        row = {"variant": v["name"], **{k: r[k] for k in ("cv_f1_finished", "cv_detection_at_15fa", "cv_threshold_15fa")}}
        table.append(row)
        print(f"{row['variant']:50s} CV F1 {row['cv_f1_finished']:.4f}  detection at 15% stream FA "
              f"{row['cv_detection_at_15fa']:.3f} (thr {row['cv_threshold_15fa']:.3f})  [{time.time() - started:.0f} s]", flush=True)
    # The product's aim is the stream: detection at the target false-alarm rate first, then finished F1.
    # The shared head's CV rows are not held out (the main head trained on them): it cannot be chosen on CV.
    best_i = max((i for i in runs if VARIANTS[i]["head"] != "shared"),
                 key=lambda i: (runs[i]["cv_detection_at_15fa"] + runs[i]["cv_f1_finished"]))
    v = VARIANTS[best_i]
    streams = streams_of(runs[best_i]["oof_pref"], D["pref_row"], D["pref_t"], len(D["y"]))
    rules, rule = choose_rule(streams, D["y"], TARGET_FA)
    print(f"chosen: {v['name']}; rule {rule}", flush=True)
    head = main_head if v["head"] == "shared" else Logistic(C=v.get("C", C), seed=a.seed).fit(*training_set(D, np.arange(len(D["y"])), v, extra))
    if a.answer_guard:
        head, rule = saved_answer_head(a.answer_guard)
        print(f"tested: the answer head of {Path(a.answer_guard).name}; rule {rule}", flush=True)
    T = load_split(a, proj, "test", ("answer", "answer_pref", "whole", "whole_pref", "resp_pref"))
    base_thr = float(config["inference"]["default_threshold"])
    res = {"config": {"guard_input_dim": int(D["answer"].shape[1]), "folds": a.folds, "seed": a.seed,
                      "target_false_alarm": TARGET_FA, "every": 4, "guard_threshold": base_thr},
           "cv_table": table, "chosen_variant": v, "rule_table": rules, "rule": rule}
    previous = saved_answer_head(a.previous_guard) if a.previous_guard else None
    res["test"] = side_by_side(T, head, main_head, rule, base_thr, previous)
    if a.previous_guard:
        res["previous_rule"] = previous[1]
    ev = Path(a.guard) / "eval_results.json"
    if ev.is_file():
        e = json.loads(ev.read_text())
        res["today_eval"] = {"f1": e.get("f1"), "average_f1": e.get("average_f1")}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    plot(out / "tradeoff.png", res)
    print_report(res)


def print_report(res: dict) -> None:
    f1 = res["test"]["finished_f1"]
    print("\nfinished answers, test macro-F1:")
    for name, d in f1.items():
        print(f"  {name:24s} " + "  ".join(f"{k} {v:.4f}" for k, v in d.items()))
    print("\nstreams (test, both datasets):")
    for name, s in res["test"]["streams"]["both"].items():
        if s is None:
            continue
        print(f"  {name:20s} thr {s['threshold']:.3f} k{s['debounce']} min{s['min_answer_tokens']} ema {s['ema']}: "
              f"FA {s['false_alarm']:.3f} (finished {s['false_alarm_finished']:.3f}, tax {s['streaming_tax']:+.3f}) "
              f"detection {s['detection']:.3f} (finished {s['detection_finished']:.3f}) "
              f"ttd median {s['ttd_median']} p90 {s['ttd_p90']}")


if __name__ == "__main__":
    main()
