"""Harm categories: the output taxonomy, the source mappings, and the category head at run time.

Reads `configs/categories.yaml` (the taxonomy: OpenAI's 13 moderation categories; and per source
dataset, its categories mapped onto them) and, in a guard folder, the category head:

- `categories.safetensors`: `input_mean`, `input_scale` (k,) and `network.<i>.weight/bias` of
  `Sequential([Linear(k, h), ReLU,] Linear(., C))`, fp32; C = the trained categories;
- `categories.json`: `format_version`, `taxonomy` (all output names), `trained` (the C names, in
  the network's output order), `thresholds` {name: float}, `hidden`, `input_dim`, and how the head
  and its thresholds were chosen (for people, not read here).

The head reads the same (n, input_dim) selected-neuron features as the binary head
(`SirenGuard.features`); a category is harmful iff its sigmoid score (`proba`) >= its threshold.
The score reported to users (`category_scores`) is that score rescaled so that the threshold sits
at 0.5: sigmoid(logit(p) - logit(threshold)), the same order, so `category_scores[c] >= 0.5`
exactly when `categories[c]`, as a harmful score reads against its default threshold 0.5.
Categories no training row labelled are absent from `trained`: they are reported as not trained,
never scored. `llm-siren` ignores these files. Imports no training code (fitting:
siren.pipeline.categories).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from siren.errors import SirenError

HEAD_WEIGHTS = "categories.safetensors"
HEAD_CONFIG = "categories.json"
FORMAT_VERSION = 1


def taxonomy_path() -> Path:
    from siren.paths import config_file  # the checkout's configs/, else the installed package's

    return config_file("categories.yaml")


@dataclass(frozen=True)
class Taxonomy:
    """names: the output categories in order; sources: {dataset: {source category: (output names)}}."""

    names: tuple[str, ...]
    sources: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)

    def annotates(self, dataset: str) -> bool:
        """Whether any category of `dataset` maps to an output category."""
        return any(self.sources.get(dataset, {}).values())

    def targets(self, dataset: str, rows: Sequence[Mapping | None]) -> tuple[np.ndarray, np.ndarray]:
        """(Y, M), each (n, len(names)): Y 1.0 where a row is positive for an output category;
        M True where the row annotates it (some source category mapped to it is 0 or 1, not null).
        A row whose `categories` is None, or a dataset with no mapping, annotates nothing."""
        C, index = len(self.names), {n: i for i, n in enumerate(self.names)}
        Y = np.zeros((len(rows), C), dtype=np.float32)
        M = np.zeros((len(rows), C), dtype=bool)
        mapping = self.sources.get(dataset)
        for r, cats in enumerate(rows):
            if not cats or mapping is None:
                continue
            for name, value in cats.items():
                if name not in mapping:
                    raise SirenError(f"dataset {dataset!r}: category {name!r} is not in {taxonomy_path().name}'s "
                                     f"sources.{dataset}; map it there (an empty list maps it to none)")
                if value is None:
                    continue
                for out in mapping[name]:
                    M[r, index[out]] = True
                    if value == 1:
                        Y[r, index[out]] = 1.0
        return Y, M


def parse_taxonomy(raw, source: str) -> Taxonomy:
    """The `categories.yaml` content -> Taxonomy; SirenError naming `source` and the key at fault."""
    if not isinstance(raw, dict) or set(raw) - {"taxonomy", "sources"} or "taxonomy" not in raw:
        raise SirenError(f"{source}: expected the keys 'taxonomy' (a list of names) and 'sources', "
                         f"got {sorted(raw) if isinstance(raw, dict) else type(raw).__name__}")
    names = raw["taxonomy"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise SirenError(f"{source}: taxonomy must be a non-empty list of category names")
    if len(set(names)) != len(names):
        raise SirenError(f"{source}: taxonomy names a category twice")
    sources = {}
    for dataset, mapping in (raw.get("sources") or {}).items():
        if not isinstance(mapping, dict):
            raise SirenError(f"{source}: sources.{dataset} must map source categories to lists of output names")
        sources[str(dataset)] = {}
        for cat, outs in mapping.items():
            where = f"{source}: sources.{dataset}.{cat}"
            if not isinstance(outs, list):
                raise SirenError(f"{where} must be a list of output categories ([] for none), got {outs!r}")
            unknown = [o for o in outs if o not in names]
            if unknown:
                raise SirenError(f"{where} maps to {unknown}, not in the taxonomy ({', '.join(names)})")
            sources[str(dataset)][str(cat)] = tuple(outs)
    return Taxonomy(tuple(names), sources)


@functools.lru_cache(maxsize=4)
def load_taxonomy(path: str | None = None) -> Taxonomy:
    """The taxonomy of `path` (default: configs/categories.yaml)."""
    import yaml

    from siren.fileio import load_yaml  # a key given twice is an error, not a silent override

    path = Path(path) if path else taxonomy_path()
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, yaml.YAMLError) as err:
        raise SirenError(f"cannot read the category taxonomy {path}: {err}") from err
    return parse_taxonomy(raw, str(path))


# ---------------------------------------------------------------- the head

class CategoryHead(nn.Module):
    """(n, k) features -> (n, C) logits: standardise, then a linear layer or a one-hidden-layer MLP."""

    def __init__(self, input_dim: int, n_out: int, hidden: int = 0):
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_scale", torch.ones(input_dim))
        layers: list[nn.Module] = [nn.Linear(input_dim, hidden), nn.ReLU()] if hidden else []
        layers.append(nn.Linear(hidden or input_dim, n_out))
        self.network = nn.Sequential(*layers)
        self.input_dim, self.n_out, self.hidden = int(input_dim), int(n_out), int(hidden)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.network((z - self.input_mean) / self.input_scale)


@dataclass
class CategoryModel:
    """A fitted category head: `trained` names (its outputs, in order), their `thresholds` (C,),
    the whole `taxonomy` and `info` (how it was chosen; written to categories.json)."""

    head: CategoryHead
    trained: list[str]
    thresholds: np.ndarray
    taxonomy: list[str]
    info: dict = field(default_factory=dict)

    @torch.inference_mode()
    def proba(self, z) -> np.ndarray:
        """(n, C) float64 sigmoid scores of the trained categories for features z (n, input_dim)."""
        z = torch.as_tensor(np.asarray(z, dtype=np.float32))
        if z.ndim != 2 or z.shape[1] != self.head.input_dim:
            raise SirenError(f"category head: features must have shape (n, {self.head.input_dim}), got {tuple(z.shape)}")
        if len(z) == 0:
            return np.zeros((0, len(self.trained)))
        return torch.sigmoid(self.head(z)).double().numpy()

    def reported(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flags (n, C) bool, reported scores (n, C) float64) of `proba`'s scores P (n, C): a flag
        is P >= the category's threshold; its reported score is P's log-odds minus the threshold's,
        through the sigmoid, so 0.5 is every category's decision point (per category the same order
        as P, hence the same AUROC). Clamped on the right side of 0.5 so that rounding can never
        make a reported score disagree with its flag."""
        P = np.asarray(P, dtype=np.float64)
        flags = P >= self.thresholds
        logit = lambda x: np.log(x) - np.log1p(-x)  # noqa: E731
        eps = 1e-12
        shifted = logit(np.clip(P, eps, 1 - eps)) - logit(np.clip(self.thresholds.astype(np.float64), eps, 1 - eps))
        scores = 1.0 / (1.0 + np.exp(-shifted))
        scores = np.where(flags, np.maximum(scores, 0.5), np.minimum(scores, np.nextafter(0.5, 0.0)))
        return flags, scores

    def verdicts(self, z) -> list[tuple[dict[str, bool], dict[str, float]]]:
        """Per row: ({category: harmful?}, {category: reported score}) over the trained categories."""
        flags, scores = self.reported(self.proba(z))
        return [({n: bool(f[i]) for i, n in enumerate(self.trained)},
                 {n: float(s[i]) for i, n in enumerate(self.trained)}) for f, s in zip(flags, scores)]

    def config(self) -> dict:
        """categories.json: what the loader needs, plus the fit's record (`info`; a metric that is
        undefined on these rows, e.g. an AUROC without positives, is written as null)."""
        return {"format_version": FORMAT_VERSION, "taxonomy": list(self.taxonomy), "trained": list(self.trained),
                "thresholds": {n: float(t) for n, t in zip(self.trained, self.thresholds)},
                "hidden": self.head.hidden, "input_dim": self.head.input_dim, **_finite(self.info)}

    def save(self, folder) -> None:
        """Write categories.safetensors, then categories.json, into `folder` (atomically each)."""
        from safetensors.torch import save_file

        from siren.fileio import atomic_write_json, atomic_write_with

        folder = Path(folder)
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.head.state_dict().items()}
        atomic_write_with(folder / HEAD_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        atomic_write_json(folder / HEAD_CONFIG, self.config())


def _finite(value):
    """`value` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def _check_head_config(cfg, source: str) -> tuple[list[str], np.ndarray, int, int]:
    if not isinstance(cfg, dict):
        raise SirenError(f"{source}: expected a JSON object")
    try:
        taxonomy, trained, thr = list(cfg["taxonomy"]), list(cfg["trained"]), cfg["thresholds"]
        hidden, input_dim = int(cfg["hidden"]), int(cfg["input_dim"])
        thresholds = np.array([float(thr[n]) for n in trained])
    except (KeyError, TypeError, ValueError) as err:
        raise SirenError(f"{source}: missing or malformed key ({err}); it needs taxonomy, trained, thresholds, "
                         "hidden, input_dim: write it again with `siren categories`") from None
    if not trained or any(n not in taxonomy for n in trained) or len(set(trained)) != len(trained):
        raise SirenError(f"{source}: 'trained' must name distinct categories of its taxonomy, got {trained}")
    if not all(math.isfinite(t) and 0.0 <= t <= 1.0 for t in thresholds):
        raise SirenError(f"{source}: thresholds must be in [0, 1], got {thresholds.tolist()}")
    return taxonomy, thresholds, hidden, input_dim


def load_category_model(folder, input_dim: int) -> CategoryModel | None:
    """The category head in guard `folder`, or None when it has none (older guards, llm-siren's).
    SirenError when its files are half there, corrupt, or do not fit the guard's `input_dim`."""
    from siren.artifact import read_safetensors

    folder = Path(folder)
    cfg_path, w_path = folder / HEAD_CONFIG, folder / HEAD_WEIGHTS
    if not cfg_path.exists() and not w_path.exists():
        return None
    if not (cfg_path.is_file() and w_path.is_file()):
        missing = w_path if cfg_path.is_file() else cfg_path
        raise SirenError(f"{missing} is missing but its partner is there: refit the category head "
                         "(`siren categories --guard FOLDER`) or remove both files")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        state = read_safetensors(w_path)
    except (OSError, ValueError) as err:
        raise SirenError(f"category head in {folder} could not be read ({err}): refit it or remove "
                         f"{HEAD_CONFIG} and {HEAD_WEIGHTS}") from err
    taxonomy, thresholds, hidden, k = _check_head_config(cfg, str(cfg_path))
    if k != int(input_dim):
        raise SirenError(f"{cfg_path}: the category head reads {k} features, the guard gives {input_dim}: "
                         "it belongs to another guard; refit it")
    head = CategoryHead(k, len(thresholds), hidden)
    try:
        head.load_state_dict(state)
    except RuntimeError as err:
        raise SirenError(f"{w_path} does not fit {cfg_path} ({str(err).splitlines()[0]}): refit the head") from None
    head.eval().requires_grad_(False)
    info = {key: v for key, v in cfg.items() if key not in ("format_version", "taxonomy", "trained", "thresholds",
                                                            "hidden", "input_dim")}
    return CategoryModel(head, list(cfg["trained"]), thresholds, taxonomy, info)


# ---------------------------------------------------------------- OpenAI's moderation shape (siren serve)

def untrained_categories(guard) -> list[str]:
    """The taxonomy's categories `guard` has no score for (all of them without a category head):
    /v1/moderations reports them as false / 0.0, since OpenAI's schema has no null."""
    model = getattr(guard, "categories", None)
    names = list(model.taxonomy) if model is not None else list(load_taxonomy().names)
    return [n for n in names if model is None or n not in model.trained]


def moderation_result(r, verdict_name: str = "harmful") -> dict:
    """One /v1/moderations result of a ScoreResult: `flagged` is the guard's harmful verdict;
    every taxonomy category is filled (those without a score false / 0.0), plus `verdict_name`
    holding the verdict itself."""
    cats, scores = getattr(r, "categories", None) or {}, getattr(r, "category_scores", None) or {}
    names = list(load_taxonomy().names)
    names += [n for n in cats if n not in names]
    return {"flagged": bool(r.is_harmful),
            "categories": {**{n: bool(cats.get(n, False)) for n in names}, verdict_name: bool(r.is_harmful)},
            "category_scores": {**{n: float(scores.get(n, 0.0)) for n in names}, verdict_name: float(r.score)},
            "category_applied_input_types": {n: ["text"] for n in names + [verdict_name]}}


def category_fields(result) -> dict:
    """{"categories", "category_scores"} of a ScoreResult for a stream message; {} without a head."""
    if getattr(result, "categories", None) is None:
        return {}
    return {"categories": dict(result.categories), "category_scores": dict(result.category_scores or {})}
