"""The paper's shell drivers forward exactly the flags whose variables are set (and nothing
else, so configs/defaults.yaml decides the rest); every flag they emit is one the CLI takes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from siren.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
TRAIN_VARS = ["MODEL", "DATASETS", "DATA_DIR", "MAX_PER_SPLIT", "SEED", "VAL_RATIO", "POOLING_TYPES", "DEVICE", "DTYPE",
              "BATCH_SIZE", "BATCH_TOKENS", "C_VALUES", "PROBE_TOL", "PROBE_C_RULE", "SELECTION_THRESHOLDS", "N_TRIALS", "N_FOLDS", "N_JOBS",
              "HEAD_BATCH_SIZE", "DECISION_THRESHOLD", "STORAGE", "STUDY_NAME"]
EVAL_VARS = ["MODEL", "DATASETS", "EXTRA_DATASETS", "DATA_DIR", "MAX_PER_SPLIT", "DEVICE", "DTYPE", "BATCH_SIZE",
             "BATCH_TOKENS", "CALIBRATE"]


def _run(script: str, tmp_path: Path, env_vars: dict, *extra: str) -> list[str]:
    """Run a driver with SIREN_PYTHON pointing at a stub that records its argv; returns it."""
    stub, record = tmp_path / "python", tmp_path / "argv"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\necho "$SIREN_DATA_DIR" > "{record}.env"\n')
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in TRAIN_VARS + EVAL_VARS + ["SIREN_DATA_DIR"]}
    env.update(env_vars, SIREN_PYTHON=str(stub))
    proc = subprocess.run(["bash", str(REPO / script), *extra], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return record.read_text().splitlines()


@pytest.mark.parametrize("script, command", [("train/run_general_siren.sh", "train"),
                                             ("test/eval_general_siren.sh", "eval")])
def test_nothing_set_passes_no_flag(tmp_path, script, command):
    assert _run(script, tmp_path, {}) == ["-m", "siren", command]


def test_train_driver_forwards_each_set_variable(tmp_path):
    (tmp_path / "rows").mkdir()
    (tmp_path / "tiny").mkdir()
    argv = _run("train/run_general_siren.sh", tmp_path, {
        "MODEL": "tiny", "DATASETS": "aegis beavertails", "DATA_DIR": "rows", "MAX_PER_SPLIT": "600 200 300",
        "SEED": "7", "VAL_RATIO": "0.25", "POOLING_TYPES": "residual_mean mlp_mean", "DEVICE": "cpu",
        "DTYPE": "float32", "BATCH_SIZE": "8", "BATCH_TOKENS": "4096", "C_VALUES": "1 10", "PROBE_TOL": "1e-6",
        "PROBE_C_RULE": "one_se", "PROBE_REFIT": "1",
        "SELECTION_THRESHOLDS": "0.8 0.9", "N_TRIALS": "3", "N_FOLDS": "2", "N_JOBS": "2", "HEAD_BATCH_SIZE": "64",
        "DECISION_THRESHOLD": "0.4", "STORAGE": "runs/x.journal", "STUDY_NAME": "s", "C_UNUSED": "ignored",
    }, "--out_dir", "o")
    assert argv == ["-m", "siren", "train",
                    "--model", str(tmp_path / "tiny"), "--datasets", "aegis", "beavertails",
                    "--data_dir", str(tmp_path / "rows"), "--max_per_split", "600", "200", "300", "--seed", "7",
                    "--val_ratio", "0.25", "--pooling_types", "residual_mean", "mlp_mean", "--device", "cpu",
                    "--dtype", "float32", "--batch_size", "8", "--batch_tokens", "4096", "--c_values", "1", "10",
                    "--probe_tol", "1e-6", "--probe_c_rule", "one_se", "--selection_thresholds", "0.8", "0.9", "--n_trials", "3", "--n_folds", "2", "--n_jobs", "2",
                    "--head_batch_size", "64", "--probe_refit", "--decision_threshold", "0.4", "--storage", "runs/x.journal",
                    "--study_name", "s", "--out_dir", "o"]
    args = build_parser(only="train").parse_args(argv[2:])
    assert args.selection_thresholds == [0.8, 0.9] and args.head_batch_size == 64 and args.batch_size == 8
    assert args.probe_tol == 1e-6 and args.probe_c_rule == "one_se" and args.probe_refit is True


def test_eval_driver_forwards_each_set_variable(tmp_path):
    argv = _run("test/eval_general_siren.sh", tmp_path, {
        "MODEL": "qwen3-0.6b", "DATASETS": "aegis", "EXTRA_DATASETS": "advbench harmbench", "MAX_PER_SPLIT": "300",
        "DEVICE": "cuda:1", "DTYPE": "bfloat16", "BATCH_SIZE": "32", "BATCH_TOKENS": "8192", "CALIBRATE": "1"})
    assert argv == ["-m", "siren", "eval", "--model", "qwen3-0.6b", "--datasets", "aegis",
                    "--extra_datasets", "advbench", "harmbench", "--max_per_split", "300", "--device", "cuda:1",
                    "--dtype", "bfloat16", "--batch_size", "32", "--batch_tokens", "8192", "--calibrate"]
    build_parser(only="eval").parse_args(argv[2:])


def test_unset_flags_take_the_yaml_defaults(monkeypatch, tmp_path):
    """With no flag, training's config is exactly configs/defaults.yaml (no second default anywhere)."""
    from siren import config
    from siren.pipeline.train import TRAIN_KEYS, resolve_config

    monkeypatch.delenv("SIREN_DATA_DIR", raising=False)
    cfg = resolve_config(build_parser(only="train").parse_args(["train"]))
    yaml = config.defaults()
    assert {k: cfg[k] for k in TRAIN_KEYS if k != "out_dir"} == {k: yaml[k] for k in TRAIN_KEYS if k != "out_dir"}
    assert cfg["out_dir"] == str(config.output_dir(yaml["model"]))


def test_relative_siren_data_dir_is_made_absolute(tmp_path):
    """The drivers cd into the repository: a relative $SIREN_DATA_DIR must still mean the user's folder."""
    (tmp_path / "rows").mkdir()
    assert _run("train/run_general_siren.sh", tmp_path, {"SIREN_DATA_DIR": "rows"}) == ["-m", "siren", "train"]
    assert (tmp_path / "argv.env").read_text().strip() == str(tmp_path / "rows")
