"""Dataset registry, loading and seeded splits.

Reads either the Hugging Face Hub (`datasets.load_dataset`, through one adapter per dataset
that maps the Hub's columns to ours) or SIREN-ready JSONL files
`<data_dir>/<dataset>/<split>.jsonl` (one object a line: id, text, label, prompt, response).
Writes the split ids (`write_split_ids`, JSON) and SIREN-ready JSONL (`write_jsonl`).

Every frame has the columns id (str), text (str), label (int, 1 = harmful), prompt (str) and
response (str or None); when a source annotates harm categories, also `categories` ({source
category: 1 | 0 | None}, None = not annotated; a row without any: None), mapped onto the output
taxonomy by siren.categories. `text` is what SIREN classifies: the prompt, or prompt + "\\n" +
response for response-level datasets.

Splits are made once, seeded and stratified by label: the source's own splits are kept, a
missing validation split is carved out of train, and a dataset with a single split is cut
60/20/20. Rows with the same text always land in the same carved split, so duplicated inputs
(about 30% of the offline PKU-SafeRLHF rows) cannot leak from train into test.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from siren import config
# The registry (Hub ids, adapters, our columns) is re-exported: `siren.data` is what callers import.
from siren.dataset_registry import (COLUMNS, OPENAI_CATEGORIES, REGISTRY, SPLITS, DatasetSpec, Row,  # noqa: F401
                                    _check_categories, _frame, adapt_rows, is_eval_only, known_datasets,
                                    row_categories, spec)
from siren.errors import SirenError
from siren.fileio import atomic_write_text

ENV_DATA_DIR = "SIREN_DATA_DIR"
# Share of a single-split dataset that becomes test (validation takes val_ratio, train the rest).
SINGLE_SPLIT_TEST_RATIO = 0.2

# --------------------------------------------------------------------------- loading


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """`data_dir`, else $SIREN_DATA_DIR, else None (= load from the Hub)."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(ENV_DATA_DIR) or None
    if chosen is None:
        return None
    path = pathlib.Path(chosen).expanduser()
    if not path.is_dir():
        source = "--data_dir" if data_dir not in (None, "") else f"${ENV_DATA_DIR}"
        raise SirenError(
            f"data directory {path} (from {source}) does not exist; point --data_dir or "
            f"{ENV_DATA_DIR} at a folder of <dataset>/<split>.jsonl files, or unset "
            f"{ENV_DATA_DIR} to load from the Hugging Face Hub"
        )
    return path


def load_hub(name: str) -> dict[str, pd.DataFrame]:
    """The source splits of `name` from the Hugging Face Hub, through its adapter."""
    import datasets  # slow to import; only the Hub path needs it

    s = spec(name)
    out = {}
    for split, (config, hub_split) in s.hub_splits.items():
        try:
            rows = datasets.load_dataset(s.hub_id, config, split=hub_split)
        except Exception as err:  # network, auth (gated sets), or a renamed split
            raise SirenError(
                f"could not load {s.hub_id} (config {config}, split {hub_split}) for dataset {name!r} "
                f"from the Hugging Face Hub: {err}. Offline, set {ENV_DATA_DIR} or --data_dir to a "
                f"folder of SIREN-ready JSONL files"
            ) from err
        out[split] = adapt_rows(name, rows, split)
    return out


def _check_text(value, field: str, where: str, *, nullable: bool = False) -> None:
    """A JSON string field: a str holding only real characters (a lone UTF-16 surrogate such as
    "\\ud800" parses but cannot be encoded, tokenised or written back)."""
    if value is None and nullable:
        return
    if not isinstance(value, str):
        kind = "a string or null" if nullable else "a string"
        raise SirenError(f"{where}: {field} must be {kind}, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise SirenError(f"{where}: {field} holds a lone surrogate ({value[err.start]!r} at character "
                         f"{err.start}), which is not a character; fix the \\u escape") from None


def _row_id(value, where: str) -> str:
    """Ids are non-empty strings or integers; both are kept as text (so 7 and "7" are one id)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        got = "null" if value is None else f"a {type(value).__name__} ({json.dumps(value)[:40]})"
        raise SirenError(f"{where}: id must be a non-empty string or an integer, got {got}")
    if isinstance(value, str):
        _check_text(value, "id", where)
        if not value.strip():
            raise SirenError(f"{where}: id must be a non-empty string or an integer, got {value!r}")
    return str(value)


def _read_jsonl(path: pathlib.Path) -> pd.DataFrame:
    """One SIREN-ready JSONL file -> frame; SirenError with file:line on a bad line.

    Lines are decoded one by one (strict UTF-8), so a bad byte is reported with its line; ids
    are compared as text, so a repeat is reported with both line numbers."""
    rows = []
    first_line: dict[str, int] = {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise SirenError(f"{where}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} "
                                 "of the line); re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise SirenError(f"{where}: malformed JSON ({err.msg}); fix or remove the line") from None
            except RecursionError:
                raise SirenError(f"{where}: JSON nested too deeply to read; a row is one flat object "
                                 "with id, text, label, prompt, response") from None
            if not isinstance(obj, dict) or not {"id", "text", "label"} <= obj.keys():
                raise SirenError(f"{where}: expected an object with id, text, label, prompt, response")
            id_ = _row_id(obj["id"], where)
            if id_ in first_line:
                raise SirenError(f"{where}: duplicate id {id_!r}, first used on line {first_line[id_]} (ids are "
                                 "compared as text: 7 and \"7\" are the same id); ids must be unique")
            first_line[id_] = lineno
            label = obj["label"]
            # bool is an int subclass; reject it so that true/false is not silently read as 1/0
            if isinstance(label, bool) or label not in (0, 1):
                raise SirenError(f"{where}: label must be 0 or 1 (1 = harmful), got {label!r}")
            _check_text(obj["text"], "text", where)
            prompt = obj.get("prompt", obj["text"])
            _check_text(prompt, "prompt", where)
            _check_text(obj.get("response"), "response", where, nullable=True)
            rows.append({"id": id_, "text": obj["text"], "label": label, "prompt": prompt,
                         "response": obj.get("response"),
                         "categories": _check_categories(obj.get("categories"), where)})
    if not rows:
        raise SirenError(f"{path} holds no rows (the file is empty); fill it with one JSON object a line "
                         "or remove it")
    return _frame(rows, str(path))


def load_local(name: str, data_dir: pathlib.Path) -> dict[str, pd.DataFrame]:
    """The splits of `name` found in `<data_dir>/<name>/<split>.jsonl`."""
    spec(name)
    folder = data_dir / name
    if not folder.is_dir():
        hint = " (Aegis 2.0 has no offline copy: load it from the Hub)" if name == "aegis2" else ""
        raise SirenError(
            f"no local copy of dataset {name!r}: {folder} does not exist{hint}; set {ENV_DATA_DIR} "
            f"or --data_dir to a folder holding {name}/<split>.jsonl, or unset {ENV_DATA_DIR} to use the Hub"
        )
    out = {split: _read_jsonl(folder / f"{split}.jsonl") for split in SPLITS if (folder / f"{split}.jsonl").is_file()}
    if not out:
        raise SirenError(f"{folder} holds none of {', '.join(s + '.jsonl' for s in SPLITS)}")
    seen: dict[str, str] = {}
    for split, frame in out.items():
        for id_ in frame["id"]:
            if id_ in seen:
                raise SirenError(f"dataset {name!r}: id {id_!r} is in both {seen[id_]}.jsonl and {split}.jsonl")
            seen[id_] = split
    return out


def load_source(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, pd.DataFrame]:
    """The source's own splits of `name` (keys among SPLITS): local JSONL if a data dir is
    given or $SIREN_DATA_DIR is set, else the Hub."""
    spec(name)
    folder = resolve_data_dir(data_dir)
    return load_hub(name) if folder is None else load_local(name, folder)


# --------------------------------------------------------------------------- splitting


def _rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    """A generator fixed by (seed, dataset, purpose): independent of process state and of
    Python's hash randomisation, and a cap drawn on one split does not shift another."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


def _apportion(quota: np.ndarray, cap: np.ndarray, k: int) -> np.ndarray:
    """Integer counts (c,) summing to k, near the real `quota` (c,), each at most `cap` (c,):
    floors first, then the largest remainders (ties to the lower class)."""
    if k > cap.sum():
        raise ValueError(f"cannot take {k} items from {int(cap.sum())}")
    counts = np.minimum(np.floor(quota).astype(np.int64), cap)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    while counts.sum() < k:
        for c in order:
            if counts.sum() < k and counts[c] < cap[c]:
                counts[c] += 1
    return counts


def _stratified_parts(labels: np.ndarray, sizes: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Positions 0..n-1 of `labels` (n,) -> len(sizes) + 1 disjoint sorted index arrays: parts of
    the given sizes, each with the overall class ratio (within one item), then the rest."""
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    share = np.array([len(p) for p in pools]) / len(labels)
    taken = np.zeros(len(classes), dtype=np.int64)
    parts = []
    for k in sizes:
        counts = _apportion(k * share, np.array([len(p) for p in pools]) - taken, k)
        parts.append(np.sort(np.concatenate([p[t:t + n] for p, t, n in zip(pools, taken, counts)])))
        taken += counts
    parts.append(np.sort(np.concatenate([p[t:] for p, t in zip(pools, taken)])))
    return parts


def _carve(frame: pd.DataFrame, ratios: list[float], rng: np.random.Generator) -> list[pd.DataFrame]:
    """Cut `frame` into len(ratios) + 1 parts (the last takes the rest), stratified by label.
    Rows sharing a text form one group and go to the same part; a group counts as harmful if
    any of its rows is. Groups are also stratified by size (1, 2, 3+), so that duplicated
    texts, which are often of one class, do not tilt a part's row-level class ratio."""
    codes, uniques = pd.factorize(frame["text"])
    group_label = np.zeros(len(uniques), dtype=np.int64)
    np.maximum.at(group_label, codes, frame["label"].to_numpy())
    group_size = np.minimum(np.bincount(codes), 3)
    sizes = [int(round(r * len(uniques))) for r in ratios]
    parts = _stratified_parts(group_label * 4 + group_size, sizes, rng)
    return [frame[np.isin(codes, groups)] for groups in parts]


def _cap(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """A stratified sample of n rows of `frame`, in source order."""
    return frame.iloc[_stratified_parts(frame["label"].to_numpy(), [n], rng)[0]]


def split_caps(max_per_split: int | Sequence[int] | None) -> dict[str, int | None]:
    """{split: cap or None} from one cap for all splits or three (train, validation, test)."""
    if max_per_split is None:
        return {s: None for s in SPLITS}
    values = [max_per_split] if isinstance(max_per_split, (int, np.integer)) else list(max_per_split)
    if len(values) == 1:
        values = values * len(SPLITS)
    if len(values) != len(SPLITS) or any(not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        raise SirenError(f"max_per_split must be one positive integer or three (train validation test), "
                         f"got {max_per_split!r}")
    return {s: int(v) for s, v in zip(SPLITS, values)}


def load_splits(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    val_ratio: float | None = None,
    max_per_split: int | Sequence[int] | None = None,
) -> dict[str, pd.DataFrame]:
    """Seeded, stratified, disjoint train/validation/test frames of `name` (only "test" for
    eval-only datasets). Each frame's attrs["derived"] says how the split was obtained.

    max_per_split: one cap for every split, or three (train, validation, test); seed and
    val_ratio None: configs/defaults.yaml's."""
    seed = config.default("seed") if seed is None else seed
    val_ratio = config.default("val_ratio") if val_ratio is None else val_ratio
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SirenError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0 < val_ratio < 1 - SINGLE_SPLIT_TEST_RATIO:
        raise SirenError(f"val_ratio must be in (0, {1 - SINGLE_SPLIT_TEST_RATIO:g}), got {val_ratio!r}")
    caps = split_caps(max_per_split)
    source = load_source(name, data_dir)
    have = [s for s in SPLITS if s in source]
    how = f"stratified, seed {seed}"

    if is_eval_only(name):
        only = "test" if "test" in source else have[0]
        splits = {"test": (source[only], f"source {only} (eval only)")}
    elif have == list(SPLITS):
        splits = {s: (source[s], f"source {s}") for s in SPLITS}
    elif have == ["train", "test"]:
        train, val = _carve(source["train"], [1 - val_ratio], _rng(seed, name, "validation"))
        splits = {
            "train": (train, f"source train minus validation ({1 - val_ratio:.0%})"),
            "validation": (val, f"validation carved from train ({val_ratio:.0%}, {how})"),
            "test": (source["test"], "source test"),
        }
    elif len(have) == 1:
        (only,) = have
        train_ratio = 1 - val_ratio - SINGLE_SPLIT_TEST_RATIO
        test, val, train = _carve(source[only], [SINGLE_SPLIT_TEST_RATIO, val_ratio], _rng(seed, name, "single"))
        splits = {
            "train": (train, f"{train_ratio:.0%} of source {only} ({how})"),
            "validation": (val, f"{val_ratio:.0%} of source {only} ({how})"),
            "test": (test, f"{SINGLE_SPLIT_TEST_RATIO:.0%} of source {only} ({how})"),
        }
    else:
        raise SirenError(f"dataset {name!r} has source splits {have}; expected train+test, all three, or one")

    out = {}
    for split, (frame, derived) in splits.items():
        cap = caps[split]
        if cap is not None and len(frame) > cap:
            frame = _cap(frame, cap, _rng(seed, name, f"cap:{split}"))
            derived += f", capped to {cap} ({how})"
        if frame.empty:
            raise SirenError(f"dataset {name!r}: split {split} is empty; it has too few rows to split")
        if frame["label"].nunique() < 2 and not is_eval_only(name):
            warnings.warn(
                f"dataset {name!r}: split {split} holds only label {int(frame['label'].iloc[0])} "
                f"({len(frame)} rows); F1 and probes on it are degenerate",
                stacklevel=2,
            )
        frame = frame.reset_index(drop=True)
        frame.attrs["derived"] = derived
        out[split] = frame
    return out


def make_splits(
    names: list[str],
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    val_ratio: float | None = None,
    max_per_split: int | Sequence[int] | None = None,
) -> dict[str, dict[str, pd.DataFrame]]:
    """{dataset: {split: frame}} for `names`, from load_splits."""
    return {name: load_splits(name, data_dir=data_dir, seed=seed, val_ratio=val_ratio,
                              max_per_split=max_per_split) for name in names}


def split_ids_of(splits: Mapping[str, Mapping[str, pd.DataFrame]]) -> dict[str, dict[str, list[str]]]:
    """{dataset: {split: [ids in split order]}} of `make_splits`' frames."""
    return {name: {split: frame["id"].tolist() for split, frame in parts.items()} for name, parts in splits.items()}


def label_counts(splits: Mapping[str, Mapping[str, pd.DataFrame]],
                 which: Sequence[str] = ("train", "validation")) -> dict[str, int]:
    """{"dataset '<name>' (harmful|safe)": rows} over the `which` splits: the strata that training's
    cross-validation folds are stratified on (dataset x label)."""
    counts: dict[str, int] = {}
    for name, parts in splits.items():
        labels = np.concatenate([parts[s]["label"].to_numpy() for s in which if s in parts] or [np.zeros(0)])
        for value, word in ((1, "harmful"), (0, "safe")):
            counts[f"dataset {name!r} ({word})"] = int((labels == value).sum())
    return counts


def make_split_ids(
    names: list[str],
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    val_ratio: float | None = None,
    max_per_split: int | Sequence[int] | None = None,
) -> dict[str, dict[str, list[str]]]:
    """{dataset: {split: [ids in split order]}} for `names`, from load_splits."""
    return split_ids_of(make_splits(names, data_dir=data_dir, seed=seed, val_ratio=val_ratio,
                                    max_per_split=max_per_split))


def _output_file(path: str | os.PathLike) -> pathlib.Path:
    """`path` as a file to (over)write, its folder created; SirenError if it is a folder."""
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        raise SirenError(f"{path} is a folder: give a file path to write (e.g. {path / 'splits.json'})")
    if path.parent.exists() and not path.parent.is_dir():
        raise SirenError(f"cannot write {path}: {path.parent} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_split_ids(path: str | os.PathLike, split_ids: dict[str, dict[str, list[str]]]) -> None:
    """Write split ids as JSON (sorted keys, indented), atomically."""
    path = _output_file(path)
    atomic_write_text(path, json.dumps(split_ids, sort_keys=True, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write `frame` (COLUMNS) as SIREN-ready JSONL, atomically."""
    cats = row_categories(frame)
    lines = (
        json.dumps({"id": r.id, "text": r.text, "label": int(r.label), "prompt": r.prompt,
                    "response": r.response, **({"categories": c} if c is not None else {})}, ensure_ascii=False)
        for r, c in zip(frame.itertuples(index=False), cats)
    )
    path = _output_file(path)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
