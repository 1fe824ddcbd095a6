"""experiments/compare_guards.py: paired differences against sklearn and hand-drawn resamples; bad input."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import compare_guards  # noqa: E402

from siren.errors import SirenError  # noqa: E402


def _write(folder: Path, rows: list[dict], threshold: float = 0.5) -> Path:
    folder.mkdir()
    (folder / "test_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "eval_results.json").write_text(json.dumps({"decision_threshold": threshold}))
    return folder


def _rows(y, s, dataset, order=None):
    order = range(len(y)) if order is None else order
    return [{"dataset": dataset, "id": f"{dataset}-{i}", "label": int(y[i]), "score": float(s[i])} for i in order]


@pytest.fixture
def two_guards(tmp_path):
    rng = np.random.default_rng(0)
    y1, y2 = (rng.random(90) < 0.2).astype(int), (rng.random(60) < 0.5).astype(int)
    sa1, sa2 = np.clip(0.5 * y1 + rng.random(90) * 0.6, 0, 1), np.clip(0.4 * y2 + rng.random(60) * 0.7, 0, 1)
    sb1, sb2 = np.clip(sa1 + rng.normal(0, 0.1, 90), 0, 1), np.clip(sa2 + rng.normal(0, 0.1, 60), 0, 1)
    harmful_only = [{"dataset": "advbench", "id": f"a{i}", "label": 1, "score": 0.9} for i in range(5)]
    a = _write(tmp_path / "a", _rows(y1, sa1, "d1") + _rows(y2, sa2, "d2") + harmful_only)
    # B lists its rows in another order and uses another threshold: rows are matched by id
    b = _write(tmp_path / "b", _rows(y1, sb1, "d1", order=range(89, -1, -1)) + _rows(y2, sb2, "d2") + harmful_only,
               threshold=0.45)
    return a, b, (y1, sa1, sb1), (y2, sa2, sb2)


def test_paired_differences(two_guards):
    a, b, (y1, sa1, sb1), (y2, sa2, sb2) = two_guards
    r = compare_guards.compare(a, b, resamples=300, seed=5)
    assert list(r["datasets"]) == ["d1", "d2"]                    # advbench: one label, no macro-F1
    sk = lambda y, p: f1_score(y, p, average="macro", labels=[0, 1], zero_division=0)  # noqa: E731
    diffs = []
    for k, (y, sa, sb) in enumerate([(y1, sa1, sb1), (y2, sa2, sb2)]):
        e = r["datasets"][f"d{k + 1}"]
        assert e["f1_a"] == pytest.approx(sk(y, sa >= 0.5)) and e["f1_b"] == pytest.approx(sk(y, sb >= 0.45))
        # the resamples, drawn by hand as documented: the same rows for both guards
        idx = np.random.default_rng(5 + k).integers(0, len(y), size=(300, len(y)))
        d = np.array([sk(y[i], sb[i] >= 0.45) - sk(y[i], sa[i] >= 0.5) for i in idx])
        diffs.append(d)
        assert e["diff_ci95"] == pytest.approx(list(np.quantile(d, [0.025, 0.975])), abs=1e-12)
        assert e["share_b_better"] == pytest.approx(np.mean(d > 0))
    avg = np.mean(diffs, axis=0)
    assert r["average"]["diff"] == pytest.approx(np.mean([r["datasets"][n]["diff"] for n in ("d1", "d2")]))
    assert r["average"]["diff_ci95"] == pytest.approx(list(np.quantile(avg, [0.025, 0.975])), abs=1e-12)
    # a guard against itself: every paired difference is 0
    same = compare_guards.compare(a, a, resamples=50)
    assert same["average"]["diff_ci95"] == [0.0, 0.0] and same["average"]["share_b_better"] == 0.0


def test_cli_prints_table_and_writes_json(two_guards, tmp_path, capsys):
    a, b, *_ = two_guards
    assert compare_guards.main([str(a), str(b), "--resamples", "100", "--out", str(tmp_path / "c.json")]) == 0
    printed = capsys.readouterr().out
    assert "average" in printed and "95% paired interval" in printed
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["average"]["diff"] == pytest.approx(compare_guards.compare(a, b, resamples=100)["average"]["diff"])


def test_rows_that_differ_are_refused(two_guards, tmp_path, capsys):
    a, b, *_ = two_guards
    lines = (b / "test_scores.jsonl").read_text().splitlines()
    other = _write(tmp_path / "other", [json.loads(x) for x in lines[1:]])            # one row fewer
    with pytest.raises(SirenError, match="d1: the two evaluations scored different rows"):
        compare_guards.compare(a, other)
    flipped = [json.loads(x) for x in lines]
    flipped[0]["label"] = 1 - flipped[0]["label"]
    with pytest.raises(SirenError, match="another label"):
        compare_guards.compare(a, _write(tmp_path / "flipped", flipped))
    with pytest.raises(SirenError, match="different datasets"):
        compare_guards.compare(a, _write(tmp_path / "fewer", [json.loads(x) for x in lines if '"d2"' not in x]))
    (tmp_path / "empty").mkdir()
    assert compare_guards.main([str(a), str(tmp_path / "empty")]) == 2
    assert "test_scores.jsonl is missing: evaluate the guard first" in capsys.readouterr().err
    (a / "test_scores.jsonl").write_text('{"dataset": "d1"}\n')
    with pytest.raises(SirenError, match="line 1: expected an object with dataset, id, label, score"):
        compare_guards.compare(a, b)
