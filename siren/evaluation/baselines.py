"""The systems SIREN is compared with, all trained and evaluated on the split ids of one run.

Reads: a trained run folder (`results.json` for the run's configuration, `splits.json` for its
split ids, the guard artifact) and, through `RunData`, the rows (`siren.data.load_splits` with
the run's settings, checked against `splits.json`) and the on-disk feature cache
(`siren.pipeline.extract`). Writes nothing: `siren.evaluation.report` writes the report.

Systems (`SYSTEMS`; each returns a `System` that scores texts or cached features):

- `tfidf_lr`: TF-IDF of word 1-2 grams + logistic regression (class-balanced); C chosen on
  validation (mean over datasets of macro-F1), refit on train + validation.
- `profanity_check`: PyPI `alt-profanity-check` (its own shipped model; inference only).
- `last_layer`: an L2 logistic probe (standardised inputs, class-balanced) on the last layer's
  pooled features; C chosen on validation, refit on train + validation.
- `best_layer`: the pipeline's L1 probes (`fit_probe_grid`, the run's C grid), and the single
  layer with the best validation F1; trained on train, as SIREN's probes are.
- `all_neurons_mlp`: SIREN's head search (`tune_head` + `fit_head`, the run's trial and fold
  budget) on all layers' features without selection or weighting; when L * d exceeds
  `all_neurons_limit`, on a seeded random subset of the size of SIREN's selection instead
  (the system's `notes` say which).
- `uniform_weights`: SIREN's selection with every layer weighted 1.0, same head search.
- `siren`: the run's trained guard, as saved (its training time is the run's probes + Optuna +
  final-head stages, from `results.json`).

Every probability system predicts harmful at P >= 0.5, the threshold the guard artifact uses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from siren.errors import SirenError

SYSTEMS = ("tfidf_lr", "profanity_check", "last_layer", "best_layer", "all_neurons_mlp", "uniform_weights", "siren")
TFIDF_C = (0.1, 1.0, 10.0, 100.0)
LAST_LAYER_C = (0.001, 0.01, 0.1, 1.0)


@dataclass
class Split:
    """One (dataset, split): rows (dicts with id, text, prompt, response), labels y (n,) int64,
    ids (n,) str, and the feature cache folder (None until features are ensured)."""

    rows: list[dict]
    y: np.ndarray
    ids: np.ndarray
    features: Path | None = None

    @property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.rows]


class RunData:
    """Rows, labels and cached features of a trained run, on exactly the run's split ids.

    run_dir: the training output folder. extra_datasets: harmful-only / eval-only test sets
    scored in addition (their test split is drawn with the run's seed and caps).
    """

    def __init__(self, run_dir, *, extra_datasets=None, cache_dir=None, device=None, batch_tokens=None):
        from siren import config as cfgmod
        from siren import data
        from siren.artifact import load_guard_config

        self.run_dir = Path(run_dir)
        if not (self.run_dir / "results.json").is_file() or not (self.run_dir / "splits.json").is_file():
            raise SirenError(f"{self.run_dir} is not a trained run folder (needs results.json and splits.json): "
                             "train one with train/run_general_siren.sh")
        self.results = json.loads((self.run_dir / "results.json").read_text())
        self.cfg = dict(self.results["config"])
        self.guard_config = load_guard_config(self.run_dir)
        # the run's settings; those a run from before they existed does not record: configs/defaults.yaml's
        self.train_cfg = cfgmod.load("train", base=self.cfg)
        self.model = self.cfg["model"]
        self.seed = self.train_cfg.seed
        self.datasets = list(self.cfg["datasets"])
        self.extras = [d for d in extra_datasets or [] if d not in self.datasets]
        self.rep = self.guard_config["siren_module"]["pooling_type"]
        self.split_kw = dict(data_dir=self.cfg.get("data_dir"), seed=self.seed,
                             val_ratio=self.train_cfg.val_ratio,
                             max_per_split=self.cfg.get("max_per_split"))
        self.cache_dir = cache_dir or self.cfg.get("cache_dir")
        self.device = device or self.cfg.get("device")
        self.batch_tokens = batch_tokens or self.cfg.get("batch_tokens")
        self.max_length = int(self.guard_config["inference"]["max_length"])
        wanted = json.loads((self.run_dir / "splits.json").read_text())
        self.splits: dict[tuple[str, str], Split] = {}
        for name in self.datasets + self.extras:
            for split, frame in data.load_splits(name, **self.split_kw).items():
                ids = frame["id"].astype(str).to_numpy()
                if name in wanted and list(ids) != list(wanted[name].get(split, [])):
                    raise SirenError(f"{name}/{split}: the rows drawn now differ from the run's splits.json "
                                     "(data folder changed?): retrain, or point --data_dir at the run's data")
                rows = frame[["id", "text", "prompt", "response"]].to_dict("records")
                self.splits[(name, split)] = Split(rows, frame["label"].to_numpy(np.int64), ids)
        self._backbone = None

    # -- features ------------------------------------------------------------------------
    def ensure_features(self) -> None:
        """Point every split at its finished cache folder (extracting what is missing: the extra
        datasets' test splits, usually), with the run's cache settings."""
        from siren.pipeline.cache import load_features
        from siren.pipeline.extract import ensure_features

        paths = ensure_features(self.model, self.datasets + self.extras, pooling_types=[self.rep],
                                cache_dir=self.cache_dir, batch_tokens=self.batch_tokens, dtype=self.cfg.get("dtype"),
                                device=self.device, cache_dtype=self.train_cfg.cache_dtype, max_length=self.max_length,
                                **self.split_kw)
        for (name, split), s in self.splits.items():
            folder = paths[(name, split, self.rep)]
            if list(np.asarray(load_features(folder).ids).astype(str)) != list(s.ids):
                raise SirenError(f"{folder}: cached ids differ from the split's; delete the folder and rerun")
            s.features = folder

    def X(self, name: str, split: str) -> np.ndarray:
        """(n, L, d) memmap of one split's cached features."""
        from siren.pipeline.cache import load_features

        s = self.splits[(name, split)]
        if s.features is None:
            raise SirenError("features not ensured: call RunData.ensure_features() first")
        return load_features(s.features).X

    def stack(self, split: str, names=None):
        """X (n, L, d) float32, y (n,), groups (n,) dataset index, over `names` (default: the run's datasets)."""
        names = list(names or self.datasets)
        Xs = [np.asarray(self.X(n, split), dtype=np.float32) for n in names]
        ys = [self.splits[(n, split)].y for n in names]
        gs = [np.full(len(y), i, dtype=np.int64) for i, y in enumerate(ys)]
        return np.concatenate(Xs), np.concatenate(ys), np.concatenate(gs)

    def texts(self, split: str, names=None):
        """texts (list), y (n,), groups (n,) over `names` (default: the run's datasets)."""
        names = list(names or self.datasets)
        texts, ys, gs = [], [], []
        for i, n in enumerate(names):
            s = self.splits[(n, split)]
            texts += s.texts
            ys.append(s.y)
            gs.append(np.full(len(s.y), i, dtype=np.int64))
        return texts, np.concatenate(ys), np.concatenate(gs)

    @property
    def num_layers(self) -> int:
        return int(self.X(self.datasets[0], "train").shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.X(self.datasets[0], "train").shape[2])

    # -- the backbone, for latency ---------------------------------------------------------
    def featurizer(self, layers: list[int]) -> Callable[[list[str]], np.ndarray]:
        """texts -> (b, L, d) float32 with `layers` filled (the others zero), by one padded forward
        that stops after the deepest needed layer: the runtime's feature function."""
        from siren.features import LayerFeatures

        if self._backbone is None:
            from siren.backbones import load_backbone

            self._backbone = load_backbone(self.model, device=self.device, dtype=self.cfg.get("dtype"))
        bb = self._backbone
        lf = LayerFeatures(bb.model, bb.tokenizer, pooling_types=(self.rep,), layers=layers, max_length=self.max_length)
        L, d = self.num_layers, self.hidden_size

        def featurize(texts: list[str]) -> np.ndarray:
            ids = lf.tokenize(texts)                                 # normalises, as the runtime does
            part = lf(ids)[self.rep].numpy()                       # (b, len(layers), d)
            out = np.zeros((len(texts), L, d), np.float32)
            out[:, layers] = part
            return out

        featurize.layer_features = lf                              # for token counts
        return featurize


@dataclass
class System:
    """A trained comparison system.

    kind "text": `proba_text(texts) -> (n,)`; kind "features": `proba_features(X (n, L, d)) -> (n,)`
    reading only `layers`. `n_features`: its input width; `n_params`: its trained parameters
    (the frozen backbone not counted).
    """

    name: str
    kind: str
    train_seconds: float | None
    n_features: int
    n_params: int
    proba_text: Callable | None = None
    proba_features: Callable | None = None
    layers: list[int] | None = None
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


@dataclass
class Unavailable:
    """A system that could not run here, and why (printed in the report instead of numbers)."""

    name: str
    reason: str


def _mean_group_f1(y, pred, g) -> float:
    from siren.metrics import mean_group_macro_f1

    return mean_group_macro_f1(y, pred, g)


# --------------------------------------------------------------------------- text baselines

def fit_tfidf_lr(run: RunData, seed: int) -> System:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    tr, y_tr, _ = run.texts("train")
    va, y_va, g_va = run.texts("validation")

    def fit(texts, y, C):
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        clf = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed)
        clf.fit(vec.fit_transform(texts), y)
        return vec, clf

    scores = {}
    for C in TFIDF_C:
        vec, clf = fit(tr, y_tr, C)
        scores[C] = _mean_group_f1(y_va, clf.predict(vec.transform(va)), g_va)
    best_C = max(TFIDF_C, key=lambda c: (scores[c], -c))      # ties: the stronger regularisation
    vec, clf = fit(tr + va, np.concatenate([y_tr, y_va]), best_C)
    seconds = time.perf_counter() - start
    n_feat = len(vec.vocabulary_)
    return System("tfidf_lr", "text", seconds, n_feat, n_feat + 1,
                  proba_text=lambda texts: clf.predict_proba(vec.transform(texts))[:, 1],
                  notes=[f"C={best_C:g} (validation F1 by C: " + ", ".join(f"{c:g}: {s:.3f}" for c, s in scores.items()) + ")"],
                  info={"C": best_C, "val_f1_by_C": {str(c): s for c, s in scores.items()}})


def fit_profanity_check(run: RunData, seed: int) -> System | Unavailable:
    try:
        from profanity_check import profanity_check as pc
    except Exception as err:  # noqa: BLE001 - any import failure means the system is not available
        return Unavailable("profanity_check", f"alt-profanity-check not importable ({type(err).__name__}: {err}); "
                                              "pip install alt-profanity-check==1.9.1")
    n_feat = len(pc.vectorizer.vocabulary_)
    # Its model is a CalibratedClassifierCV: k linear SVMs (weights + bias) with a 2-parameter
    # sigmoid calibration each, averaged.
    members = getattr(pc.model, "calibrated_classifiers_", [])
    n_params = sum(int(np.size(m.estimator.coef_)) + int(np.size(m.estimator.intercept_)) + 2 * len(m.calibrators)
                   for m in members)
    return System("profanity_check", "text", None, n_feat, n_params,
                  proba_text=lambda texts: np.asarray(pc.predict_prob(list(texts)), dtype=np.float64),
                  notes=[f"alt-profanity-check 1.9.1: its shipped model ({len(members)} calibrated linear SVMs "
                         "on its own TF-IDF vocabulary), not trained on these rows"])


# --------------------------------------------------------------------------- feature baselines

def fit_last_layer(run: RunData, seed: int) -> System:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    last = run.num_layers - 1
    X_tr, y_tr, _ = run.stack("train")
    X_va, y_va, g_va = run.stack("validation")
    Z_tr, Z_va = X_tr[:, last], X_va[:, last]

    def fit(Z, y, C):
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=5000,
                                                                  random_state=seed)).fit(Z, y)

    scores = {C: _mean_group_f1(y_va, fit(Z_tr, y_tr, C).predict(Z_va), g_va) for C in LAST_LAYER_C}
    best_C = max(LAST_LAYER_C, key=lambda c: (scores[c], -c))
    model = fit(np.concatenate([Z_tr, Z_va]), np.concatenate([y_tr, y_va]), best_C)
    seconds = time.perf_counter() - start
    d = Z_tr.shape[1]
    return System("last_layer", "features", seconds, d, d + 1, layers=[last],
                  proba_features=lambda X: model.predict_proba(np.asarray(X[:, last], dtype=np.float32))[:, 1],
                  notes=[f"layer {last}, L2, C={best_C:g} (validation F1 by C: "
                         + ", ".join(f"{c:g}: {s:.3f}" for c, s in scores.items()) + ")"],
                  info={"layer": last, "C": best_C})


@dataclass
class Probes:
    """The pipeline's probe grid on the run's train/validation rows, fitted once and shared."""

    grid: object
    seconds: float


def fit_probes(run: RunData) -> Probes:
    from siren.pipeline.probes import DEFAULT_TOL, fit_probe_grid

    start = time.perf_counter()
    X_tr, y_tr, g_tr = run.stack("train")
    X_va, y_va, g_va = run.stack("validation")
    # the run's own tolerance, C rule and refit (runs from before the settings existed used DEFAULT_TOL, "best", no refit)
    grid = fit_probe_grid(X_tr, y_tr, X_va, y_va, g_va, [float(c) for c in run.cfg["c_values"]], groups_train=g_tr,
                          tol=float(run.cfg.get("probe_tol") or DEFAULT_TOL), c_rule=run.cfg.get("probe_c_rule") or "best",
                          refit=bool(run.cfg.get("probe_refit")))
    return Probes(grid, time.perf_counter() - start)


def fit_best_layer(run: RunData, probes: Probes) -> System:
    grid = probes.grid
    best = int(np.argmax(grid.val_f1))                          # first max: the shallower layer on ties
    coef, b = grid.coef[best] / grid.scale[best], float(grid.intercept[best])
    b_raw = b - float(np.dot(grid.mean[best].astype(np.float64), coef.astype(np.float64)))

    def proba(X):
        z = np.asarray(X[:, best], dtype=np.float32) @ coef.astype(np.float32) + b_raw
        return 1.0 / (1.0 + np.exp(-z))

    nnz = int(np.count_nonzero(grid.coef[best]))
    return System("best_layer", "features", probes.seconds, grid.coef.shape[1], nnz + 1, layers=[best],
                  proba_features=proba,
                  notes=[f"layer {best} (validation F1 {grid.val_f1[best]:.3f}), C={grid.chosen_C[best]:g}, "
                         f"{nnz} non-zero weights; time = all layers' probes"],
                  info={"layer": best, "C": float(grid.chosen_C[best]), "nonzero": nnz})


def _head_on(Z: np.ndarray, y: np.ndarray, g: np.ndarray, run: RunData, seed: int, n_trials: int, n_folds: int,
             scale: np.ndarray | None = None):
    """The run's own head search and final head (``train.search_head`` / ``train.final_head``
    with the run's settings, so every MLP system gets SIREN's procedure and budget) on
    inputs Z (n, k): (head, tuned, epochs). Settings a run from before they existed does not
    record come from configs/defaults.yaml."""
    from siren import config as cfgmod
    from siren.pipeline.train import final_head, search_head

    cfg = cfgmod.load("train", {"n_trials": n_trials, "n_folds": n_folds}, base=run.cfg).replace(storage=None)
    tuned = search_head(cfg, Z, y, g, seed, scale=scale)
    head, _, epochs = final_head(cfg, tuned, Z, y, seed, scale=scale)
    return head, tuned, epochs


def _n_params(head) -> int:
    return int(sum(p.numel() for p in head.parameters()))


def _run_selection(run: RunData):
    """The run guard's (selection {layer: idx}, weights (L,))."""
    from siren.artifact import selection_from_config

    _, selection, weight_of = selection_from_config(run.guard_config)
    weights = np.ones(run.num_layers, dtype=np.float64)
    for layer, w in weight_of.items():
        weights[layer] = w
    return selection, weights


def fit_all_neurons_mlp(run: RunData, seed: int, n_trials: int, n_folds: int, limit: int) -> System:
    from siren.mlp import predict_proba_head

    start = time.perf_counter()
    L, d = run.num_layers, run.hidden_size
    selection, _ = _run_selection(run)
    k = sum(len(v) for v in selection.values())
    if L * d <= limit:
        columns = np.arange(L * d)
        note = f"all {L * d} features (L={L} x d={d}), unweighted"
    else:
        columns = np.sort(np.random.default_rng(seed).choice(L * d, size=k, replace=False))
        note = (f"a seeded random subset of {k} of the {L * d} features (SIREN's selection size; all "
                f"{L * d} exceed the limit of {limit}), unweighted")

    def inputs(X):
        return np.asarray(X, dtype=np.float32).reshape(len(X), L * d)[:, columns]

    X_all, y_all, g_all = (np.concatenate(p) for p in zip(run.stack("train"), run.stack("validation")))
    head, tuned, epochs = _head_on(inputs(X_all), y_all, g_all, run, seed, n_trials, n_folds)
    seconds = time.perf_counter() - start
    layers = sorted({int(c) // d for c in columns})
    return System("all_neurons_mlp", "features", seconds, len(columns), _n_params(head), layers=layers,
                  proba_features=lambda X: predict_proba_head(head, inputs(X)).astype(np.float64),
                  notes=[note, f"CV F1 {tuned.best_value:.3f}, {n_trials} trials x {n_folds} folds"],
                  info={"columns": int(len(columns)), "subset": bool(L * d > limit), "cv_f1": tuned.best_value,
                        "head": tuned.best_params, "final_epochs": epochs})


def fit_uniform_weights(run: RunData, probes: Probes, seed: int, n_trials: int, n_folds: int) -> System:
    from siren.mlp import predict_proba_head
    from siren.pipeline.select import aggregate, select_neurons

    start = time.perf_counter()
    chosen = run.results.get("chosen", {})
    # "threshold": the key of runs from before it was named selection_threshold
    selection_threshold = chosen.get("selection_threshold", chosen.get("threshold"))
    if selection_threshold is None:
        selection_threshold = run.train_cfg.selection_thresholds[0]
    selection = select_neurons(np.asarray(probes.grid.coef), float(selection_threshold))
    run_selection, _ = _run_selection(run)
    same = (sorted(selection) == sorted(run_selection)
            and all(np.array_equal(selection[l], run_selection[l]) for l in selection))
    ones = np.ones(run.num_layers)
    X_all, y_all, g_all = (np.concatenate(p) for p in zip(run.stack("train"), run.stack("validation")))
    head, tuned, epochs = _head_on(aggregate(X_all, selection, ones), y_all, g_all, run, seed, n_trials, n_folds)
    seconds = time.perf_counter() - start + probes.seconds
    k = sum(len(v) for v in selection.values())
    return System("uniform_weights", "features", seconds, k, _n_params(head), layers=sorted(selection),
                  proba_features=lambda X: predict_proba_head(head, aggregate(X, selection, ones)).astype(np.float64),
                  notes=[f"SIREN's selection (selection threshold {float(selection_threshold):g}; same neurons as the run: {same}), "
                         f"every layer weighted 1.0; CV F1 {tuned.best_value:.3f}"],
                  info={"same_selection_as_run": bool(same), "cv_f1": tuned.best_value, "head": tuned.best_params,
                        "final_epochs": epochs})


def load_siren(run: RunData) -> System:
    from siren.artifact import load_head
    from siren.mlp import predict_proba_head
    from siren.pipeline.select import aggregate

    selection, weights = _run_selection(run)
    head = load_head(run.run_dir)
    timings = run.results.get("timings_s", {})
    parts = [timings[k] for k in ("probes", "optuna", "final_head") if k in timings]
    k = sum(len(v) for v in selection.values())
    return System("siren", "features", float(sum(parts)) if parts else None, k, _n_params(head),
                  layers=sorted(selection),
                  proba_features=lambda X: predict_proba_head(head, aggregate(X, selection, weights)).astype(np.float64),
                  notes=[f"the run's guard ({k} neurons from {len(selection)} layers); time = the run's probes + "
                         "Optuna + final head"],
                  info={"cv_f1": run.results.get("chosen", {}).get("cv_f1")})


def fit_systems(run: RunData, names, *, seed: int, n_trials: int, n_folds: int, all_neurons_limit: int,
                log=print) -> list[System | Unavailable]:
    """Train (or load) the named systems in order, sharing one probe fit."""
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise SirenError(f"unknown system(s) {unknown}: choose from {', '.join(SYSTEMS)}")
    probes = None
    out = []
    for name in names:
        log(f"[siren] report: fitting {name} ...")
        t = time.perf_counter()
        if name in ("best_layer", "uniform_weights") and probes is None:
            probes = fit_probes(run)
        if name == "tfidf_lr":
            s = fit_tfidf_lr(run, seed)
        elif name == "profanity_check":
            s = fit_profanity_check(run, seed)
        elif name == "last_layer":
            s = fit_last_layer(run, seed)
        elif name == "best_layer":
            s = fit_best_layer(run, probes)
        elif name == "all_neurons_mlp":
            s = fit_all_neurons_mlp(run, seed, n_trials, n_folds, all_neurons_limit)
        elif name == "uniform_weights":
            s = fit_uniform_weights(run, probes, seed, n_trials, n_folds)
        else:
            s = load_siren(run)
        log(f"[siren] report: {name} ready in {time.perf_counter() - t:.1f} s")
        out.append(s)
    return out
