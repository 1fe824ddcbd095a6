"""Evaluation of the category head, beside a TF-IDF one-vs-rest baseline (`siren eval`, `siren report`).

Reads: the guard's category head (siren.categories), the test rows of every evaluated dataset
whose source annotates categories (configs/categories.yaml) with their cached features, and, for
the baseline, the train and validation rows' texts of the guard's training datasets.
Returns (for eval_results.json's `categories` block): per output category, over the held-out
rows that annotate it, AUROC, PR-AUC and F1 at the stored threshold, for ours and for the
baseline; per source dataset too; and the macro averages over the categories with at least
MIN_EVAL_POSITIVES positive held-out rows (fewer make AUROC too noisy to compare).

The baseline: per trained category, TF-IDF (word 1-2 grams) + logistic regression fitted on the
train rows that annotate the category, its C chosen by validation AUROC, its threshold by
validation F1 with the head's fallback rule: the same rows and protocol as the head.
"""

from __future__ import annotations

import numpy as np

from siren.categories import load_category_model, load_taxonomy
from siren.log import log
from siren.pipeline.categories import FALLBACK_THRESHOLD, auroc, category_metrics, choose_thresholds

MIN_EVAL_POSITIVES = 20
TFIDF_C = (0.1, 1.0, 10.0, 100.0)


def _rows(datasets, split: str, split_kw: dict, taxonomy, cols: list[int]):
    """(texts, Y, M, source) of `split` over the annotating datasets, M and Y restricted to cols."""
    from siren import data

    texts, Ys, Ms, src = [], [], [], []
    for name in datasets:
        if not taxonomy.annotates(name):
            continue
        frames = data.load_splits(name, **split_kw)
        if split not in frames:
            continue
        frame = frames[split]
        Y, M = taxonomy.targets(name, data.row_categories(frame))
        texts += frame["text"].tolist()
        Ys.append(Y[:, cols])
        Ms.append(M[:, cols])
        src += [name] * len(frame)
    if not Ys:
        return [], np.zeros((0, len(cols)), np.float32), np.zeros((0, len(cols)), bool), np.array([])
    return texts, np.concatenate(Ys), np.concatenate(Ms), np.array(src)


def fit_tfidf(train, val, names: list[str], seed: int):
    """Per category: (vectoriser, classifier) fitted on annotating train rows; thresholds and the
    chosen C from the validation rows. Returns (predict(texts) -> (n, C) scores, thresholds, info)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    (tt, Yt, Mt), (tv, Yv, Mv) = train[:3], val[:3]
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1).fit([tt[i] for i in np.flatnonzero(Mt.any(1))])
    Xt, Xv = vec.transform(tt), vec.transform(tv)
    models, chosen = [], {}
    for c, name in enumerate(names):
        keep, vkeep = Mt[:, c], Mv[:, c]
        best = None
        for C in TFIDF_C:
            clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(Xt[keep], Yt[keep, c])
            a = auroc(Yv[vkeep, c], clf.predict_proba(Xv[vkeep])[:, 1]) if vkeep.any() else float("nan")
            if best is None or (a == a and not a <= best[0]):
                best = (a, C, clf)
        models.append(best[2])
        chosen[name] = best[1]
    predict = lambda texts: np.stack([m.predict_proba(vec.transform(texts))[:, 1] for m in models], 1)  # noqa: E731
    thresholds, how = choose_thresholds(predict(tv), Yv, Mv, names) if len(tv) else (
        np.full(len(names), FALLBACK_THRESHOLD), {})
    return predict, thresholds, {"C": chosen, "thresholds": dict(zip(names, thresholds.tolist())), "thresholds_how": how}


def macro(metrics: dict, names: list[str]) -> dict:
    keys = ("auroc", "pr_auc", "f1")
    rows = [metrics[n] for n in names if n in metrics and all(k in metrics[n] for k in keys)]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys} if rows else {}


def evaluate_categories(folder, test_features, datasets: list[str], train_datasets: list[str],
                        split_kw: dict, seed: int) -> dict | None:
    """The `categories` block of eval_results.json, or None when the guard has no category head.
    test_features(dataset) -> (Z (n, k) float32, ids (n,)): its test rows' head input, cache order."""
    from siren import data
    from siren.artifact import load_guard_config

    model = load_category_model(folder, int(load_guard_config(folder)["mlp"]["input_dim"]))
    if model is None:
        return None
    taxonomy = load_taxonomy()
    cols = [taxonomy.names.index(n) for n in model.trained]
    # harmful-only benchmarks (one category a row, the rest unannotated) have no negatives: left out
    evaluated = [d for d in datasets if taxonomy.annotates(d) and not data.is_eval_only(d)]
    texts, Ys, Ms, src, Ps = [], [], [], [], []
    for name in evaluated:
        Z, ids = test_features(name)
        frame = data.load_splits(name, **split_kw)["test"].set_index("id").loc[[str(i) for i in ids]]
        Y, M = taxonomy.targets(name, data.row_categories(frame))
        texts += frame["text"].tolist()
        Ys.append(Y[:, cols])
        Ms.append(M[:, cols])
        src += [name] * len(ids)
        Ps.append(model.proba(Z))
    if not evaluated:
        return {"trained": model.trained, "not_trained": model.info.get("not_trained"), "evaluated_on": []}
    Y, M, P, src = np.concatenate(Ys), np.concatenate(Ms), np.concatenate(Ps), np.array(src)
    log(f"categories: TF-IDF one-vs-rest baseline on the train rows of {', '.join(train_datasets)}")
    predict, base_thr, base_info = fit_tfidf(_rows(train_datasets, "train", split_kw, taxonomy, cols),
                                             _rows(train_datasets, "validation", split_kw, taxonomy, cols),
                                             model.trained, seed)
    B = predict(texts)
    ours = category_metrics(P, Y, M, model.trained, model.thresholds)
    base = category_metrics(B, Y, M, model.trained, base_thr)
    compared = [n for n in model.trained if ours[n]["positives"] >= MIN_EVAL_POSITIVES and "auroc" in ours[n]]
    by_source = {name: {"ours": category_metrics(P[src == name], Y[src == name], M[src == name], model.trained,
                                                 model.thresholds),
                        "tfidf": category_metrics(B[src == name], Y[src == name], M[src == name], model.trained,
                                                  base_thr)} for name in evaluated}
    return {"trained": model.trained, "not_trained": model.info.get("not_trained"), "evaluated_on": evaluated,
            "min_positives": MIN_EVAL_POSITIVES, "compared": compared,
            "ours": ours, "tfidf": base, "macro": {"ours": macro(ours, compared), "tfidf": macro(base, compared)},
            "by_source": by_source, "tfidf_info": base_info}


def markdown(block: dict) -> list[str]:
    """The per-category table (ours against the TF-IDF baseline) as markdown lines."""
    if not block or not block.get("evaluated_on"):
        return []
    lines = [f"Harm categories (held-out rows of {', '.join(block['evaluated_on'])} that annotate each; "
             f"macro over categories with >= {block['min_positives']} positives):", "",
             "| category | rows | positives | AUROC | PR-AUC | F1 | TF-IDF AUROC | TF-IDF PR-AUC | TF-IDF F1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda r, k: f"{r[k]:.3f}" if k in r else "-"  # noqa: E731
    for name in block["trained"]:
        o, b = block["ours"][name], block["tfidf"][name]
        mark = "" if name in block["compared"] else " (too few positives)"
        lines.append(f"| {name}{mark} | {o['n']} | {o['positives']} | {fmt(o, 'auroc')} | {fmt(o, 'pr_auc')} | "
                     f"{fmt(o, 'f1')} | {fmt(b, 'auroc')} | {fmt(b, 'pr_auc')} | {fmt(b, 'f1')} |")
    mo, mb = block["macro"]["ours"], block["macro"]["tfidf"]
    if mo:
        lines.append(f"| **macro** | | | **{mo['auroc']:.3f}** | **{mo['pr_auc']:.3f}** | **{mo['f1']:.3f}** | "
                     f"{mb['auroc']:.3f} | {mb['pr_auc']:.3f} | {mb['f1']:.3f} |")
    lines.append(f"Not trained (no score; false / 0.0 in /v1/moderations): {', '.join(block['not_trained'] or []) or 'none'}")
    return lines


def categories_for_run(run) -> dict | None:
    """`evaluate_categories` for `siren report`'s RunData (features ensured): its guard, test rows."""
    from siren.artifact import selection_from_config
    from siren.pipeline.select import aggregate

    _, selection, weight_of = selection_from_config(run.guard_config)

    def features_of(name):
        X = run.X(name, "test")
        weights = np.ones(X.shape[1], dtype=np.float32)
        for layer, w in weight_of.items():
            weights[layer] = w
        return aggregate(X, selection, weights), run.splits[(name, "test")].ids

    return evaluate_categories(run.run_dir, features_of, run.datasets, run.datasets, run.split_kw, run.seed)
