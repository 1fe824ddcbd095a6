"""experiments/head_search_offline6/config_sweep.py --paired: the differences it prints, per configuration and per split."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments" / "head_search_offline6"))
import config_sweep  # noqa: E402


def _sweep(path, seed, holdout, cv):
    configs = [{"i": i, "params": {"lr": 1e-3 * (i + 1)}, "holdout_f1": h, "cv_f1": c}
               for i, (h, c) in enumerate(zip(holdout, cv))]
    path.write_text(json.dumps({"seed": seed, "configs": configs}))
    return str(path)


def test_paired_reports_configuration_and_split_level_differences(tmp_path):
    # split 0: other - base = +0.01, +0.03 (mean +0.02); split 1: -0.01, +0.01, +0.03 (mean +0.01)
    files = [_sweep(tmp_path / "b0.json", 0, [0.70, 0.70], [0.75, 0.75]),
             _sweep(tmp_path / "o0.json", 0, [0.71, 0.73], [0.74, 0.76]),
             _sweep(tmp_path / "b1.json", 1, [0.70, 0.70, 0.70], [0.75, 0.75, 0.75]),
             _sweep(tmp_path / "o1.json", 1, [0.69, 0.71, 0.73], [0.75, 0.75, 0.75])]
    out = config_sweep.paired(files).splitlines()
    per_config = np.array([0.01, 0.03, -0.01, 0.01, 0.03])
    se_config = per_config.std(ddof=1) / np.sqrt(5)
    assert out[0].endswith("2 configurations, held-out +0.0200, CV +0.0000")
    assert out[1].endswith("3 configurations, held-out +0.0100, CV +0.0000")
    assert out[2].startswith(f"all 5: held-out {per_config.mean():+.4f} (se {se_config:.4f}, other better in 4)")
    split_means = np.array([0.02, 0.01])
    assert out[3] == (f"over 2 splits: held-out {split_means.mean():+.4f} (se of the split means "
                      f"{split_means.std(ddof=1) / np.sqrt(2):.4f}, other better at 2 of 2)")


def test_paired_refuses_files_of_different_splits(tmp_path):
    files = [_sweep(tmp_path / "b.json", 0, [0.7], [0.7]), _sweep(tmp_path / "o.json", 1, [0.7], [0.7])]
    with pytest.raises(SystemExit, match="different held-out splits"):
        config_sweep.paired(files)


def test_paired_reports_each_datasets_difference_where_both_files_record_it(tmp_path):
    def sweep(path, by_dataset):
        configs = [{"i": i, "params": {"lr": 1e-3 * (i + 1)}, "holdout_f1": float(np.mean(v)), "cv_f1": 0.7,
                    "holdout_f1_by_dataset": v} for i, v in enumerate(by_dataset)]
        path.write_text(json.dumps({"seed": 0, "configs": configs}))
        return str(path)

    base = sweep(tmp_path / "b.json", [[0.70, 0.80], [0.60, 0.90]])
    other = sweep(tmp_path / "o.json", [[0.74, 0.79], [0.66, 0.90]])   # dataset 0: +0.04, +0.06; 1: -0.01, 0
    last = config_sweep.paired([base, other]).splitlines()[-1]
    se0 = np.std([0.04, 0.06], ddof=1) / np.sqrt(2)
    se1 = np.std([-0.01, 0.0], ddof=1) / np.sqrt(2)
    assert last == f"held-out F1 by dataset (index in g): 0 +0.0500 (se {se0:.4f}), 1 -0.0050 (se {se1:.4f})"
    # files written before the per-dataset record: no such line
    assert "by dataset" not in config_sweep.paired([_sweep(tmp_path / "b2.json", 0, [0.7], [0.7]),
                                                    _sweep(tmp_path / "o2.json", 0, [0.7], [0.7])])


def test_paired_refuses_a_sweep_without_configurations(tmp_path):
    files = [_sweep(tmp_path / "b.json", 0, [0.7], [0.7]), _sweep(tmp_path / "o.json", 0, [], [])]
    with pytest.raises(SystemExit, match="no configuration yet"):
        config_sweep.paired(files)


def test_threshold_gain_reports_each_split_and_the_split_level_mean(tmp_path):
    def sweep(path, rows):
        configs = [{"i": i, "params": {}, "holdout_f1": h, "cv_f1": 0.7, "oof_threshold": t,
                    "holdout_f1_oof_threshold": ht} for i, (h, t, ht) in enumerate(rows)]
        path.write_text(json.dumps({"seed": 0, "configs": configs}))
        return str(path)

    # split a: +0.02, -0.01 (mean +0.005); split b: +0.03 (mean +0.03)
    a = sweep(tmp_path / "a.json", [(0.70, 0.40, 0.72), (0.75, 0.60, 0.74)])
    b = sweep(tmp_path / "b.json", [(0.70, 0.45, 0.73)])
    out = config_sweep.threshold_gain([a, b]).splitlines()
    assert out[0] == "a.json: 2 configurations, thresholds 0.40-0.60 (median 0.50), held-out F1 at the threshold - at 0.5: +0.0050"
    assert out[1] == "b.json: 1 configurations, thresholds 0.45-0.45 (median 0.45), held-out F1 at the threshold - at 0.5: +0.0300"
    se = np.std([0.005, 0.03], ddof=1) / np.sqrt(2)
    assert out[2] == (f"over 2 splits: +0.0175 (se of the split means {se:.4f}, better at 2 of 2 splits, "
                      f"in 2 of 3 configurations)")
    # a sweep written before the threshold was recorded is refused, not read as no gain
    with pytest.raises(SystemExit, match="records no out-of-fold threshold"):
        config_sweep.threshold_gain([_sweep(tmp_path / "old.json", 0, [0.7], [0.7])])


def test_paired_heads_scores_the_other_file_by_its_first_fold_heads(tmp_path):
    base = _sweep(tmp_path / "b.json", 0, [0.70, 0.72], [0.75, 0.75])
    configs = [{"i": i, "params": {"lr": 1e-3 * (i + 1)}, "holdout_f1": h, "cv_f1": 0.76,
                "holdout_f1_first_heads": first}
               for i, (h, first) in enumerate([(0.74, [0.66, 0.69, 0.73, 0.72, 0.74]),
                                               (0.71, [0.68, 0.70, 0.75, 0.72, 0.71])])]
    (tmp_path / "o.json").write_text(json.dumps({"seed": 0, "configs": configs}))
    other = str(tmp_path / "o.json")
    # all five heads: +0.04, -0.01; the first three: +0.03, +0.03; the first one: -0.04, -0.04
    assert config_sweep.paired([base, other]).splitlines()[0].endswith("held-out +0.0150, CV +0.0100")
    assert config_sweep.paired([base, other], heads=3).splitlines()[0].endswith("held-out +0.0300, CV +0.0100")
    assert config_sweep.paired([base, other], heads=1).splitlines()[0].endswith("held-out -0.0400, CV +0.0100")
    with pytest.raises(SystemExit, match="first 6 fold heads"):
        config_sweep.paired([base, other], heads=6)
    # a sweep written before the record is refused, not read as its full ensemble
    with pytest.raises(SystemExit, match="records no held-out F1 of its first 3"):
        config_sweep.paired([base, _sweep(tmp_path / "old.json", 0, [0.7, 0.7], [0.7, 0.7])], heads=3)


def test_paired_heads_without_a_number_is_refused_with_the_usage(tmp_path):
    base = _sweep(tmp_path / "b.json", 0, [0.7], [0.7])
    with pytest.raises(SystemExit, match="takes a number of fold heads first"):
        config_sweep.main(["--paired", "--heads", base, base])
