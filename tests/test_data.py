"""Dataset registry: Hub adapters, local JSONL loading, seeded stratified splits, `siren data`."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from siren import data
from siren.errors import SirenError

REPO = pathlib.Path(__file__).resolve().parents[1]
PAPER_OFFLINE = ["toxic_chat", "openai_moderation", "aegis", "wildguard", "safe_rlhf", "beavertails"]


def _shared_data() -> pathlib.Path:
    """The shared data folder: $SIREN_DATA_DIR's parent, else ../shared/data next to the repo."""
    env = os.environ.get("SIREN_DATA_DIR")
    return pathlib.Path(env).parent if env else REPO.parent / "shared" / "data"


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _rows(prefix: str, n: int, harmful: int) -> list[dict]:
    """n synthetic prompt-level rows with unique texts, the first `harmful` labelled 1, spread
    over the file so that source order is not sorted by label."""
    labels = np.zeros(n, dtype=int)
    labels[np.linspace(0, n - 1, harmful).astype(int)] = 1
    return [{"id": f"{prefix}-{i:05d}", "text": f"{prefix} text {i}", "label": int(y),
             "prompt": f"{prefix} text {i}", "response": None} for i, y in enumerate(labels)]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A SIREN-ready folder: toxic_chat with train+test, openai_moderation with one split,
    aegis2 with all three, advbench (eval only)."""
    root = tmp_path / "siren"
    _write_jsonl(root / "toxic_chat" / "train.jsonl", _rows("tc-train", 200, 31))
    _write_jsonl(root / "toxic_chat" / "test.jsonl", _rows("tc-test", 50, 7))
    _write_jsonl(root / "openai_moderation" / "train.jsonl", _rows("om", 301, 95))
    for split, n in [("train", 40), ("validation", 10), ("test", 12)]:
        _write_jsonl(root / "aegis2" / f"{split}.jsonl", _rows(f"a2-{split}", n, n // 2))
    _write_jsonl(root / "advbench" / "test.jsonl", _rows("adv", 30, 30))
    monkeypatch.delenv("SIREN_DATA_DIR", raising=False)
    return root


# --------------------------------------------------------------------------- adapters


def test_registry():
    assert data.known_datasets()[:7] == ["toxic_chat", "openai_moderation", "aegis", "aegis2",
                                         "wildguard", "safe_rlhf", "beavertails"]
    assert {n for n in data.known_datasets() if data.is_eval_only(n)} == {
        "xstest", "advbench", "harmbench", "simple_safety_tests"}
    with pytest.raises(SirenError, match="unknown dataset 'nope'.*toxic_chat"):
        data.is_eval_only("nope")


def test_toxic_chat_adapter():
    rows = [{"conv_id": "abc", "user_input": "hi", "toxicity": 0, "jailbreaking": 0},
            {"conv_id": "def", "user_input": "bad", "toxicity": 1, "jailbreaking": 1}]
    f = data.adapt_rows("toxic_chat", rows, "train")
    assert f["id"].tolist() == ["abc", "def"]
    assert f["label"].tolist() == [0, 1]
    assert f["text"].tolist() == f["prompt"].tolist() == ["hi", "bad"]
    assert f["response"].tolist() == [None, None]


def test_openai_moderation_adapter_absent_keys_are_unknown():
    rows = [{"prompt": "a", "S": 0, "H": 0, "V": 0, "HR": 0, "SH": 0, "S3": 0, "H2": 0, "V2": 0},
            {"prompt": "b", "SH": 1},  # other keys absent
            {"prompt": "c", "H": 0},  # only one key present, and 0
            {"prompt": "d"},  # nothing annotated
            {"prompt": "e", "V2": 1, "S": 0}]
    f = data.adapt_rows("openai_moderation", rows, "train")
    assert f["label"].tolist() == [0, 1, 0, 0, 1]
    assert f["id"].tolist()[0] == "openai_moderation-train-00000"


def test_aegis_adapter_majority_vote_tie_is_harmful():
    def row(text, *votes):
        return {"text": text, "text_type": "user_message", "num_annotations": len(votes),
                **{f"labels_{k}": (votes[k] if k < len(votes) else None) for k in range(5)}}

    rows = [row("safe3", "Safe", "Safe", "Safe"),
            row("unsafe2of3", "Violence", "Safe", "Criminal Planning/Confessions"),
            row("safe2of3", "Safe", "Harassment", "Safe"),
            row("tie", "Safe", "Hate/Identity Hate"),  # 1 vs 1
            row("tie4", "Safe", "Safe", "Sexual", "Violence"),
            row("noone")]  # no annotator: dropped
    f = data.adapt_rows("aegis", rows, "test")
    assert f["text"].tolist() == ["safe3", "unsafe2of3", "safe2of3", "tie", "tie4"]
    assert f["label"].tolist() == [0, 1, 0, 1, 1]
    # ids keep the source position, so the dropped row does not renumber others
    assert f["id"].tolist()[-1] == "aegis-test-00004"


def test_aegis2_adapter():
    rows = [{"prompt": "p1", "response": None, "prompt_label": "safe", "response_label": None},
            {"prompt": "p2", "response": "r", "prompt_label": "unsafe", "response_label": "unsafe"}]
    f = data.adapt_rows("aegis2", rows, "validation")
    assert f["label"].tolist() == [0, 1]
    assert f["text"].tolist() == ["p1", "p2"]  # prompt-level
    assert f["id"].tolist() == ["aegis2-validation-00000", "aegis2-validation-00001"]


def test_wildguard_adapter_drops_unlabelled():
    rows = [{"prompt": "a", "response": "x", "prompt_harm_label": "harmful", "adversarial": False},
            {"prompt": "b", "response": "y", "prompt_harm_label": None, "adversarial": True},
            {"prompt": "c", "response": None, "prompt_harm_label": "unharmful", "adversarial": False},
            {"prompt": "d", "response": None}]
    f = data.adapt_rows("wildguard", rows, "train")
    assert f["text"].tolist() == ["a", "c"]
    assert f["label"].tolist() == [1, 0]
    assert f["id"].tolist() == ["wildguard-train-00000", "wildguard-train-00002"]


def test_safe_rlhf_adapter_uses_response_0():
    rows = [{"prompt": "q", "response_0": "r0", "response_1": "r1",
             "is_response_0_safe": False, "is_response_1_safe": True},
            {"prompt": "q2", "response_0": "s0", "response_1": "s1",
             "is_response_0_safe": True, "is_response_1_safe": False}]
    f = data.adapt_rows("safe_rlhf", rows, "test")
    assert f["text"].tolist() == ["q\nr0", "q2\ns0"]
    assert f["response"].tolist() == ["r0", "s0"]
    assert f["label"].tolist() == [1, 0]


def test_beavertails_adapter():
    rows = [{"prompt": "q", "response": "r", "is_safe": True, "category": {}},
            {"prompt": "q", "response": "bad", "is_safe": False, "category": {"violence": True}}]
    f = data.adapt_rows("beavertails", rows, "train")
    assert f["text"].tolist() == ["q\nr", "q\nbad"]
    assert f["prompt"].tolist() == ["q", "q"]
    assert f["label"].tolist() == [0, 1]


def test_xstest_and_harmful_only_adapters():
    f = data.adapt_rows("xstest", [{"prompt": "kill a process", "label": "safe", "type": "homonyms"},
                                   {"prompt": "kill a person", "label": "unsafe", "type": "contrast"}], "test")
    assert f["label"].tolist() == [0, 1]
    for name in ("advbench", "harmbench", "simple_safety_tests"):
        f = data.adapt_rows(name, [{"prompt": "p1", "target": "t"}, {"prompt": "p2", "category": "c"}], "test")
        assert f["label"].tolist() == [1, 1]
        assert f["id"].tolist() == [f"{name}-test-00000", f"{name}-test-00001"]


def test_adapter_rejects_missing_text():
    with pytest.raises(SirenError, match="xstest/test.*no text"):
        data.adapt_rows("xstest", [{"prompt": None, "label": "safe"}], "test")


def test_real_raw_files_through_adapters():
    raw = _shared_data() / "raw"
    beaver = raw / "beavertails" / "beavertail_test.jsonl"
    openai = raw / "openai_moderation" / "samples-1680.jsonl.gz"
    if not beaver.is_file() or not openai.is_file():
        pytest.skip(f"raw files not found under {raw}")
    with beaver.open() as fh:
        f = data.adapt_rows("beavertails", (json.loads(line) for line in fh), "test")
    # counts published in shared/data/README.md
    assert (len(f), int(f["label"].sum())) == (3021, 1733)
    assert f["response"].map(lambda r: isinstance(r, str)).all()
    with gzip.open(openai, "rt") as fh:
        f = data.adapt_rows("openai_moderation", (json.loads(line) for line in fh), "train")
    assert (len(f), int(f["label"].sum())) == (1680, 522)


# --------------------------------------------------------------------------- local loading


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("SIREN_DATA_DIR", raising=False)
    assert data.resolve_data_dir(None) is None
    monkeypatch.setenv("SIREN_DATA_DIR", str(tmp_path))
    assert data.resolve_data_dir(None) == tmp_path
    assert data.resolve_data_dir(tmp_path / "..") == tmp_path / ".."
    missing = tmp_path / "nowhere"
    with pytest.raises(SirenError, match=f"{missing}.*SIREN_DATA_DIR"):
        data.resolve_data_dir(missing)
    monkeypatch.setenv("SIREN_DATA_DIR", str(missing))
    with pytest.raises(SirenError, match=f"{missing}.*SIREN_DATA_DIR"):
        data.load_source("toxic_chat")


def test_load_local(data_dir):
    src = data.load_source("toxic_chat", data_dir)
    assert list(src) == ["train", "test"]
    f = src["train"]
    assert list(f.columns) == list(data.COLUMNS)
    assert len(f) == 200 and int(f["label"].sum()) == 31
    assert f["id"].iloc[0] == "tc-train-00000" and f["response"].iloc[0] is None


def test_load_local_missing_dataset(data_dir):
    with pytest.raises(SirenError, match=r"'wildguard'.*siren/wildguard.*SIREN_DATA_DIR"):
        data.load_source("wildguard", data_dir)
    (data_dir / "aegis2").rename(data_dir / "aegis2_away")
    with pytest.raises(SirenError, match=r"aegis2.*Aegis 2.0 has no offline copy.*SIREN_DATA_DIR"):
        data.load_source("aegis2", data_dir)


def test_load_local_malformed_line(data_dir):
    path = data_dir / "toxic_chat" / "test.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"id": "x", "text": "unterminated'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SirenError, match=f"{path}:3: malformed JSON"):
        data.load_source("toxic_chat", data_dir)


@pytest.mark.parametrize("label", [2, -1, "1", True, None, 0.5])
def test_load_local_bad_label(data_dir, label):
    path = data_dir / "toxic_chat" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[4]["label"] = label
    _write_jsonl(path, rows)
    with pytest.raises(SirenError, match=f"{path}:5: label must be 0 or 1"):
        data.load_source("toxic_chat", data_dir)


def test_load_local_duplicate_ids(data_dir):
    path = data_dir / "toxic_chat" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["id"] = rows[0]["id"]
    _write_jsonl(path, rows)
    with pytest.raises(SirenError, match="duplicate id 'tc-test-00000'"):
        data.load_source("toxic_chat", data_dir)
    rows[1]["id"] = "tc-train-00007"  # clashes with a train id
    _write_jsonl(path, rows)
    with pytest.raises(SirenError, match="tc-train-00007.*train.jsonl and test.jsonl"):
        data.load_source("toxic_chat", data_dir)


# --------------------------------------------------------------------------- splits


def _check_stratified(splits: dict, pool_labels: np.ndarray) -> None:
    """Each split's harmful count is within one row of its size times the pool's harmful share."""
    share = pool_labels.mean()
    for split, f in splits.items():
        assert abs(int(f["label"].sum()) - len(f) * share) <= 1, (split, len(f), int(f["label"].sum()))


def _check_disjoint(splits: dict) -> None:
    ids = [set(f["id"]) for f in splits.values()]
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            assert not ids[i] & ids[j]


def test_splits_carve_validation_from_train(data_dir):
    s = data.load_splits("toxic_chat", data_dir=data_dir)
    assert list(s) == list(data.SPLITS)
    assert [len(s[k]) for k in data.SPLITS] == [160, 40, 50]
    _check_disjoint(s)
    train = data.load_source("toxic_chat", data_dir)["train"]
    assert set(s["train"]["id"]) | set(s["validation"]["id"]) == set(train["id"])
    _check_stratified({k: s[k] for k in ("train", "validation")}, train["label"].to_numpy())
    assert s["test"].attrs["derived"] == "source test"
    assert s["validation"].attrs["derived"] == "validation carved from train (20%, stratified, seed 42)"
    # source order is kept within a split
    for f in s.values():
        assert f["id"].tolist() == sorted(f["id"])


def test_splits_single_source_split_60_20_20(data_dir):
    s = data.load_splits("openai_moderation", data_dir=data_dir)
    assert [len(s[k]) for k in data.SPLITS] == [181, 60, 60]
    _check_disjoint(s)
    labels = data.load_source("openai_moderation", data_dir)["train"]["label"].to_numpy()
    _check_stratified(s, labels)
    assert "60% of source train" in s["train"].attrs["derived"]


def test_splits_keep_all_three_source_splits(data_dir):
    s = data.load_splits("aegis2", data_dir=data_dir)
    assert [len(s[k]) for k in data.SPLITS] == [40, 10, 12]
    assert all(f.attrs["derived"] == f"source {k}" for k, f in s.items())


def test_splits_eval_only_and_caps(data_dir):
    s = data.load_splits("advbench", data_dir=data_dir)
    assert list(s) == ["test"] and len(s["test"]) == 30
    assert list(data.load_splits("advbench", data_dir=data_dir, max_per_split=7)["test"]["id"]) == \
        list(data.load_splits("advbench", data_dir=data_dir, max_per_split=7)["test"]["id"])
    capped = data.load_splits("openai_moderation", data_dir=data_dir, max_per_split=50)
    assert [len(f) for f in capped.values()] == [50, 50, 50]
    full = data.load_splits("openai_moderation", data_dir=data_dir)
    for k in data.SPLITS:
        assert set(capped[k]["id"]) <= set(full[k]["id"])
        _check_stratified({k: capped[k]}, full[k]["label"].to_numpy())
        assert "capped to 50" in capped[k].attrs["derived"]


def test_splits_seeded(data_dir):
    a = data.make_split_ids(["toxic_chat", "openai_moderation"], data_dir=data_dir, seed=1)
    b = data.make_split_ids(["toxic_chat", "openai_moderation"], data_dir=data_dir, seed=1)
    c = data.make_split_ids(["toxic_chat", "openai_moderation"], data_dir=data_dir, seed=2)
    assert a == b
    assert a["openai_moderation"]["test"] != c["openai_moderation"]["test"]
    assert a["toxic_chat"]["test"] == c["toxic_chat"]["test"]  # the source test never moves


def test_splits_keep_duplicate_texts_together(data_dir):
    rows = _rows("om", 120, 40)
    for i in range(0, 120, 3):  # every third row repeats the text of the row before it
        rows[i]["text"] = rows[i - 1]["text"] if i else rows[i]["text"]
    _write_jsonl(data_dir / "openai_moderation" / "train.jsonl", rows)
    s = data.load_splits("openai_moderation", data_dir=data_dir)
    texts = [set(f["text"]) for f in s.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_splits_single_class_warns(data_dir):
    _write_jsonl(data_dir / "toxic_chat" / "test.jsonl", _rows("tc-test", 20, 0))
    with pytest.warns(UserWarning, match="'toxic_chat': split test holds only label 0"):
        data.load_splits("toxic_chat", data_dir=data_dir)


def test_splits_bad_arguments(data_dir):
    with pytest.raises(SirenError, match="val_ratio"):
        data.load_splits("toxic_chat", data_dir=data_dir, val_ratio=0.9)
    with pytest.raises(SirenError, match="seed"):
        data.load_splits("toxic_chat", data_dir=data_dir, seed=-1)
    with pytest.raises(SirenError, match="max_per_split"):
        data.load_splits("toxic_chat", data_dir=data_dir, max_per_split=0)


def test_write_split_ids(tmp_path):
    path = tmp_path / "sub" / "splits.json"
    data.write_split_ids(path, {"b": {"test": ["2", "1"]}, "a": {"train": ["x"]}})
    assert path.read_text() == json.dumps({"a": {"train": ["x"]}, "b": {"test": ["2", "1"]}},
                                          sort_keys=True, indent=2) + "\n"
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temp file left


def _run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SIREN_DATA_DIR"} | (env_extra or {})
    return subprocess.run([sys.executable, "-m", "siren", "data", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_splits_byte_identical_across_processes(data_dir, tmp_path):
    outs = []
    for k, hashseed in enumerate(["1", "2"]):  # different hash randomisation in each process
        out = tmp_path / f"s{k}.json"
        r = _run_cli("splits", "--datasets", "toxic_chat", "openai_moderation", "advbench",
                     "--data_dir", str(data_dir), "--max_per_split", "100", "--out", str(out),
                     env_extra={"PYTHONHASHSEED": hashseed})
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert json.loads(outs[0])["advbench"].keys() == {"test"}
    assert "validation carved from train" in r.stdout and "harmful" in r.stdout


def test_cli_errors_and_list(data_dir, tmp_path):
    r = _run_cli("splits", "--datasets", "wildguard", "--data_dir", str(data_dir), "--out", str(tmp_path / "x.json"))
    assert r.returncode == 2 and "SIREN_DATA_DIR" in r.stderr and "Traceback" not in r.stderr
    r = _run_cli("list", "--data_dir", str(data_dir))
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if line.startswith("toxic_chat"))
    assert "lmsys/toxic-chat" in line and line.endswith("train,test")


def test_export_from_hub(tmp_path, monkeypatch):
    import datasets

    calls = []
    hub_rows = {
        "30k_train": [{"prompt": "q1", "response": "r1", "is_safe": True, "category": {}},
                      {"prompt": "q2", "response": "r2", "is_safe": False, "category": {}}],
        "30k_test": [{"prompt": "q3", "response": "r3 ü", "is_safe": False, "category": {}}],
    }

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return hub_rows[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from siren import data_cli
    from siren.cli import build_parser

    args = build_parser("data").parse_args(["data", "export", "--datasets", "beavertails", "--out", str(tmp_path)])
    assert data_cli.run(args) == 0
    assert calls == [("PKU-Alignment/BeaverTails", None, "30k_train"), ("PKU-Alignment/BeaverTails", None, "30k_test")]
    assert sorted(p.name for p in (tmp_path / "beavertails").iterdir()) == ["test.jsonl", "train.jsonl"]
    first = json.loads((tmp_path / "beavertails" / "train.jsonl").read_text().splitlines()[0])
    assert first == {"id": "beavertails-train-00000", "text": "q1\nr1", "label": 0, "prompt": "q1", "response": "r1"}
    back = data.load_source("beavertails", tmp_path)
    assert back["test"]["text"].tolist() == ["q3\nr3 ü"] and back["train"]["label"].tolist() == [0, 1]


def test_hub_failure_is_a_siren_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv("SIREN_DATA_DIR", raising=False)
    with pytest.raises(SirenError, match="walledai/XSTest.*no network.*SIREN_DATA_DIR"):
        data.load_source("xstest")


# --------------------------------------------------------------------------- real offline rows


@pytest.mark.data
def test_real_offline_splits():
    root = os.environ.get("SIREN_DATA_DIR")
    if not root or not pathlib.Path(root).is_dir():
        pytest.skip("SIREN_DATA_DIR is not set to the offline rows")
    ids = data.make_split_ids(PAPER_OFFLINE)
    assert ids == data.make_split_ids(PAPER_OFFLINE)
    for name in PAPER_OFFLINE:
        s = data.load_splits(name)
        assert list(s) == list(data.SPLITS)
        _check_disjoint(s)
        n_source = sum(len(f) for f in data.load_source(name).values())
        assert sum(len(f) for f in s.values()) == n_source
        for split, f in s.items():
            assert f["id"].tolist() == ids[name][split]
            assert f["label"].nunique() == 2
        source = data.load_source(name)
        pool_name = "train" if "train" in source else next(iter(source))
        pool = source[pool_name]["label"].to_numpy()
        carved = {k: f for k, f in s.items() if f.attrs["derived"] != "source test"}
        # rows with the same text never straddle two carved splits
        texts = [set(f["text"]) for f in carved.values()]
        assert all(not (a & b) for i, a in enumerate(texts) for b in texts[i + 1:]), name
        for split, f in carved.items():
            # duplicated texts move as groups, which loosens row-level stratification slightly
            assert abs(int(f["label"].sum()) - len(f) * pool.mean()) <= 2, (name, split)


def test_per_split_caps(tmp_path):
    from siren.data import load_splits, split_caps
    from siren.errors import SirenError

    assert split_caps(None) == {"train": None, "validation": None, "test": None}
    assert split_caps([7]) == split_caps(7) == {"train": 7, "validation": 7, "test": 7}
    assert split_caps([6, 2, 3]) == {"train": 6, "validation": 2, "test": 3}
    for bad in ([1, 2], [0], [-3, 1, 1]):
        with pytest.raises(SirenError, match="max_per_split"):
            split_caps(bad)
    d = tmp_path / "beavertails"
    d.mkdir()
    with open(d / "test.jsonl", "w") as f:
        for i in range(100):
            f.write(json.dumps({"id": f"b-{i}", "text": f"text {i}", "label": i % 2, "prompt": f"text {i}",
                                "response": None}) + "\n")
    sizes = {k: len(v) for k, v in load_splits("beavertails", data_dir=tmp_path, max_per_split=[30, 8, 10]).items()}
    assert sizes == {"train": 30, "validation": 8, "test": 10}
