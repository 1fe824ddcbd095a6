"""The dataset registry: each dataset's Hub id and splits, and the adapter that maps its Hub
columns to ours (id, text, label, prompt, response). Reads and writes nothing; loading and
splitting are in `siren.data`, which re-exports these names.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from siren.errors import SirenError

SPLITS = ("train", "validation", "test")
COLUMNS = ("id", "text", "label", "prompt", "response")

Row = dict  # one output row: the keys of COLUMNS


# --------------------------------------------------------------------------- adapters
# Each adapter is a pure function (Hub rows of one split, split name) -> our rows, in source
# order. Row ids are "<dataset>-<split>-<source row index:05d>" unless the source has ids;
# the index is the source position, so dropping unlabelled rows does not renumber the rest.


def _row(id_: str, prompt: str, response: str | None, label: bool | int, categories: dict | None = None) -> Row:
    text = prompt if response is None else f"{prompt}\n{response}"
    row = {"id": str(id_), "text": text, "label": int(label), "prompt": prompt, "response": response}
    if categories is not None:
        row["categories"] = categories
    return row


def _toxic_chat(rows: Iterable[Mapping], split: str) -> Iterator[Row]:
    for r in rows:
        yield _row(r["conv_id"], r["user_input"], None, r["toxicity"] == 1)


OPENAI_CATEGORIES = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")


def _openai_moderation(rows: Iterable[Mapping], split: str) -> Iterator[Row]:
    for i, r in enumerate(rows):
        # An absent category key means "not annotated", not "safe": only an explicit 1 counts.
        harmful = any(r.get(c) == 1 for c in OPENAI_CATEGORIES)
        cats = {c: (None if r.get(c) is None else int(r[c])) for c in OPENAI_CATEGORIES}
        yield _row(f"openai_moderation-{split}-{i:05d}", r["prompt"], None, harmful, cats)


def _aegis(rows: Iterable[Mapping], split: str) -> Iterator[Row]:
    for i, r in enumerate(rows):
        # labels_0..labels_4: one annotator each; "Safe" is safe, any category name is unsafe.
        votes = [r.get(f"labels_{k}") for k in range(5)]
        votes = [v for v in votes if v is not None]
        if not votes:
            continue  # no annotator: unknown label
        unsafe = sum(v != "Safe" for v in votes)
        # Majority vote; a tie counts as harmful (a guard should err towards flagging).
        yield _row(f"aegis-{split}-{i:05d}", r["text"], None, 2 * unsafe >= len(votes))


def _aegis2(rows: Iterable[Mapping], split: str) -> Iterator[Row]:
    for i, r in enumerate(rows):
        yield _row(f"aegis2-{split}-{i:05d}", r["prompt"], None, r["prompt_label"] == "unsafe")


def _wildguard(rows: Iterable[Mapping], split: str) -> Iterator[Row]:
    for i, r in enumerate(rows):
        if r.get("prompt_harm_label") is None:
            continue  # unlabelled prompt
        yield _row(f"wildguard-{split}-{i:05d}", r["prompt"], None, r["prompt_harm_label"] == "harmful")


def _safe_rlhf(rows: Iterable[Mapping], split: str) -> Iterator[Row]:
    for i, r in enumerate(rows):
        yield _row(f"safe_rlhf-{split}-{i:05d}", r["prompt"], r["response_0"], not r["is_response_0_safe"])


def _beavertails(rows: Iterable[Mapping], split: str) -> Iterator[Row]:
    for i, r in enumerate(rows):
        cats = {k: int(bool(v)) for k, v in (r.get("category") or {}).items()} or None
        yield _row(f"beavertails-{split}-{i:05d}", r["prompt"], r["response"], not r["is_safe"], cats)


def _xstest(rows: Iterable[Mapping], split: str) -> Iterator[Row]:
    for i, r in enumerate(rows):
        yield _row(f"xstest-{split}-{i:05d}", r["prompt"], None, r["label"] == "unsafe")


def _harmful_prompts(name: str) -> Callable[[Iterable[Mapping], str], Iterator[Row]]:
    """Adapter for benchmarks of harmful prompts only (every row label 1)."""

    def adapt(rows: Iterable[Mapping], split: str) -> Iterator[Row]:
        for i, r in enumerate(rows):
            yield _row(f"{name}-{split}-{i:05d}", r["prompt"], None, 1)

    return adapt


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives on the Hub and how its rows map to ours."""

    name: str
    hub_id: str
    # our split -> (Hub config or None, Hub split)
    hub_splits: dict[str, tuple[str | None, str]]
    adapter: Callable[[Iterable[Mapping], str], Iterator[Row]]
    eval_only: bool = False


# The Hub ids live here only, next to the column mappings they belong to.
REGISTRY: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("toxic_chat", "lmsys/toxic-chat",
                    {"train": ("toxicchat0124", "train"), "test": ("toxicchat0124", "test")}, _toxic_chat),
        DatasetSpec("openai_moderation", "mmathys/openai-moderation-api-evaluation",
                    {"train": (None, "train")}, _openai_moderation),
        DatasetSpec("aegis", "nvidia/Aegis-AI-Content-Safety-Dataset-1.0",
                    {"train": (None, "train"), "test": (None, "test")}, _aegis),
        DatasetSpec("aegis2", "nvidia/Aegis-AI-Content-Safety-Dataset-2.0",
                    {"train": (None, "train"), "validation": (None, "validation"), "test": (None, "test")},
                    _aegis2),
        DatasetSpec("wildguard", "allenai/wildguardmix",
                    {"train": ("wildguardtrain", "train"), "test": ("wildguardtest", "test")}, _wildguard),
        DatasetSpec("safe_rlhf", "PKU-Alignment/PKU-SafeRLHF",
                    {"train": (None, "train"), "test": (None, "test")}, _safe_rlhf),
        DatasetSpec("beavertails", "PKU-Alignment/BeaverTails",
                    {"train": (None, "30k_train"), "test": (None, "30k_test")}, _beavertails),
        DatasetSpec("xstest", "walledai/XSTest", {"test": (None, "test")}, _xstest, eval_only=True),
        DatasetSpec("advbench", "walledai/AdvBench", {"test": (None, "train")},
                    _harmful_prompts("advbench"), eval_only=True),
        DatasetSpec("harmbench", "walledai/HarmBench", {"test": ("standard", "train")},
                    _harmful_prompts("harmbench"), eval_only=True),
        DatasetSpec("simple_safety_tests", "Bertievidgen/SimpleSafetyTests", {"test": (None, "test")},
                    _harmful_prompts("simple_safety_tests"), eval_only=True),
    ]
}


def known_datasets() -> list[str]:
    """Registered dataset names, in registry order (the paper's seven first)."""
    return list(REGISTRY)


def spec(name: str) -> DatasetSpec:
    """The registry entry of `name`; SirenError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise SirenError(f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)}") from None


def is_eval_only(name: str) -> bool:
    """True for benchmark sets used only for evaluation (harmful-only or contrast sets)."""
    return spec(name).eval_only


def _frame(rows: Iterable[Row], where: str) -> pd.DataFrame:
    """Rows -> frame with COLUMNS and fixed dtypes; SirenError (naming `where`) on bad rows."""
    rows = list(rows)
    with_categories = any(r.get("categories") is not None for r in rows)
    frame = pd.DataFrame(rows, columns=list(COLUMNS) + ["categories"] * with_categories)
    bad = frame["text"].map(lambda t: not isinstance(t, str))
    if bad.any():
        raise SirenError(f"{where}: row {frame['id'].iloc[int(np.argmax(bad))]!r} has no text")
    frame["id"] = frame["id"].astype(str)
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        raise SirenError(f"{where}: duplicate id {dup.iloc[0]!r}; ids must be unique within a dataset")
    frame["label"] = frame["label"].astype("int64")
    frame["response"] = frame["response"].astype(object).where(frame["response"].notna(), None)
    if with_categories:
        frame["categories"] = [c if isinstance(c, dict) else None for c in frame["categories"]]
    return frame


def row_categories(frame: pd.DataFrame) -> list[dict | None]:
    """Each row's source categories ({name: 1 | 0 | None}) or None where the row has none."""
    return frame["categories"].tolist() if "categories" in frame else [None] * len(frame)


def _check_categories(value, where: str) -> dict | None:
    """A row's optional `categories`: an object of {name: 1 | 0 | null}."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and (v is None or (v in (0, 1) and not isinstance(v, bool)))
                                              for k, v in value.items()):
        raise SirenError(f"{where}: categories must be an object of {{name: 1 | 0 | null}}, got {json.dumps(value)[:80]}")
    return value


def adapt_rows(name: str, rows: Iterable[Mapping], split: str) -> pd.DataFrame:
    """Hub rows (dicts in the Hub's columns) of one split of `name` -> our frame."""
    return _frame(spec(name).adapter(rows, split), f"{name}/{split}")
