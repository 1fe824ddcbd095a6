"""experiments/authors_spread_offline6/authors_on_cached_features.py: the rows it hands the authors'
functions are in their extractor's order, each with its own features; compare.py: the
difference of both sides' mean reads and its standard error."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments" / "authors_spread_offline6"))
import authors_on_cached_features as A  # noqa: E402
import compare as C  # noqa: E402


def test_split_reps_orders_rows_as_the_authors_extractor_does(tmp_path, monkeypatch):
    L, d = 2, 3
    file_ids, caches = [], {}
    rng = np.random.default_rng(0)
    for gi, name in enumerate(A.DATASETS):
        ids = [f"{name}-{k}" for k in range(4 + gi)]                 # the data file's order
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in ids))
        file_ids += ids
        stored = rng.permutation(len(ids))                            # the cache holds its rows in another order
        code = np.array([len(file_ids) - len(ids) + k for k in stored], np.float32)
        X = np.broadcast_to(code[:, None, None], (len(ids), L, d)).copy()   # each row's features name its row
        caches[name] = SimpleNamespace(X=X, y=(code % 2).astype(np.int64), ids=np.array(ids)[stored])

    monkeypatch.setattr("siren.pipeline.cache.load_features", lambda folder: caches[Path(folder).parent.parent.name])
    reps, y, g = A.split_reps(tmp_path, tmp_path / "cache", "test")

    perm = np.random.RandomState(42).permutation(len(file_ids))     # the authors' shuffle of the concatenation
    got = np.array([rep[0][A.POOLING][0] for rep in reps])
    np.testing.assert_array_equal(got, perm)                          # row i is file row perm[i] ...
    assert all(np.all(rep[l][A.POOLING] == got[i]) for i, rep in enumerate(reps) for l in range(L))
    np.testing.assert_array_equal(y, perm % 2)                        # ... with its own label
    sizes = np.array([4 + gi for gi in range(len(A.DATASETS))])
    np.testing.assert_array_equal(g, np.repeat(np.arange(len(A.DATASETS)), sizes)[perm])   # and dataset


def _write(path: Path, per: dict, ours: bool) -> Path:
    avg = float(np.mean(list(per.values())))
    d = {"test_f1": per, "test_f1_average": avg} if ours else {"test_f1_by_dataset": per, "test_average": avg}
    path.write_text(json.dumps(d))
    return path


def test_compare_prints_the_difference_of_means_with_welchs_standard_error(tmp_path, capsys):
    ours = [{"a": 0.8, "b": 0.6}, {"a": 0.7, "b": 0.7}, {"a": 0.9, "b": 0.5}]     # averages 0.70, 0.70, 0.70
    theirs = [{"a": 0.6, "b": 0.6}, {"a": 0.7, "b": 0.8}]                         # averages 0.60, 0.75
    o = [_write(tmp_path / f"o{i}.json", p, True) for i, p in enumerate(ours)]
    t = [_write(tmp_path / f"t{i}.json", p, False) for i, p in enumerate(theirs)]
    assert C.main(["--ours", *map(str, o), "--theirs", *map(str, t)]) == 0
    lines = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines()}
    # dataset a: ours 0.8 (sd 0.1), theirs 0.65 (sd 0.0707); se = sqrt(0.01/3 + 0.005/2)
    assert lines["a"][1:] == ["0.8000", "(0.1000)", "0.6500", "(0.0707)", "+0.1500", "0.0764"]
    # average: ours 0.70 (sd 0), theirs 0.675 (sd 0.1061); se = sqrt(0 + 0.01125/2) = 0.075
    assert lines["average"][1:] == ["0.7000", "(0.0000)", "0.6750", "(0.1061)", "+0.0250", "0.0750"]
    assert "ours above theirs in 3 of 6 pairs" in " ".join(lines["reads:"])    # 0.70 > 0.60 only
    assert lines["ours'"][-1] == "+0.0050"                                        # 0.70 - (0.675 + 0.02)


def test_compare_refuses_one_read_a_side_and_files_it_cannot_read(tmp_path):
    o = [_write(tmp_path / f"o{i}.json", {"a": 0.5}, True) for i in range(2)]
    t = _write(tmp_path / "t.json", {"a": 0.5}, False)
    with pytest.raises(SystemExit, match="two reads on each side"):
        C.main(["--ours", *map(str, o), "--theirs", str(t)])
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(SystemExit, match="no test F1"):
        C.main(["--ours", *map(str, o), "--theirs", str(t), str(tmp_path / "x.json")])
    other = _write(tmp_path / "b.json", {"b": 0.5}, False)
    with pytest.raises(SystemExit, match="datasets"):
        C.main(["--ours", *map(str, o), "--theirs", str(t), str(other)])
