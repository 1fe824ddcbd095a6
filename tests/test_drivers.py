"""The shell drivers forward exactly the flags whose variables are set (and nothing else, so
configs/defaults.yaml decides the rest); every flag they emit is one the CLI takes; their
variables are the config keys of their command (siren/config_keys.py), both ways."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from siren import config
from siren.cli import build_parser
from siren.config_keys import BY_NAME

REPO = Path(__file__).resolve().parent.parent
def _run(script: str, tmp_path: Path, env_vars: dict, *extra: str) -> list[str]:
    """Run a driver with SIREN_PYTHON pointing at a stub that records its argv; returns it."""
    stub, record = tmp_path / "python", tmp_path / "argv"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\necho "$SIREN_DATA_DIR" > "{record}.env"\n')
    stub.chmod(0o755)
    every = {v for script, _ in DRIVERS for v in driver_variables(script)}
    env = {k: v for k, v in os.environ.items() if k not in every | {"SIREN_DATA_DIR"}}
    env.update(env_vars, SIREN_PYTHON=str(stub))
    proc = subprocess.run(["bash", str(REPO / script), *extra], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return record.read_text().splitlines()


DRIVERS = [("train/run_general_siren.sh", "train"), ("test/eval_general_siren.sh", "eval"),
           ("test/streaming/run_streaming_siren.sh", "eval-stream"),
           ("test/generalization/eval_gen_siren.sh", "eval-think"), ("scripts/report.sh", "report")]
# Variables of a driver that are not flags of its command, and why.
DRIVER_ONLY = {"scripts/report.sh": {"MODEL"}}   # finds RUN and the paper's guard model of a backbone
# Variables with a default in the driver, and why (every other one is empty unless set).
DRIVER_DEFAULTS = {"scripts/report.sh": {"MODEL", "GUARDS", "EXTRA_DATASETS"}}   # "default": a choice the driver makes
VARIABLE = re.compile(r'^([A-Z][A-Z0-9_]*)="\$\{\1(:?-)([^}]*)\}"', re.M)


def driver_variables(script: str) -> dict[str, str]:
    """{variable: its default in the driver} of the settings block at the top of `script`."""
    return {m[1]: m[3] for m in VARIABLE.finditer((REPO / script).read_text())}


@pytest.mark.parametrize("script, command", DRIVERS)
def test_driver_variables_are_the_keys_of_their_command(script, command):
    variables = driver_variables(script)
    keys = {BY_NAME[k].variable: k for k in config.keys_of(command)}
    assert set(variables) - DRIVER_ONLY.get(script, set()) == set(keys), (
        f"{script}: not a key of siren {command}: {sorted(set(variables) - set(keys))}; "
        f"a key without a variable: {sorted(set(keys) - set(variables))}")
    defaults = {v for v, d in variables.items() if d}
    assert defaults == DRIVER_DEFAULTS.get(script, set()), f"{script}: a second default of {sorted(defaults)}"


def _sample(key) -> list[str]:
    """A valid value of `key` as driver words, different from its default where possible."""
    if key.type is bool:
        return ["1"]
    if key.choices:
        return [str(key.choices[-1])]
    if key.type is str:
        return ["x1", "x2"] if key.list else [f"v-{key.name}"]
    low = key.min if key.min is not None else 1
    value = int(low) + 3 if key.type is int else round(float(low) + 0.25, 2)
    if key.max is not None:
        value = min(value, key.max)
    return [str(value), str(value)] if key.list else [str(value)]


@pytest.mark.parametrize("script, command", DRIVERS)
def test_every_variable_reaches_its_key(tmp_path, script, command):
    """Each variable set -> the command's parsed config holds that value for its key."""
    env, want = {}, {}
    for name in config.keys_of(command):
        key = BY_NAME[name]
        words = _sample(key)
        env[key.variable] = " ".join(words)
        typed = [key.type(w) if key.type is not bool else True for w in words]
        want[name] = typed if key.list else typed[0]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text("{}")
    if command == "report":
        env.update(RUN=str(run_dir), GUARDS="g1 g2", EXTRA_DATASETS="x1 x2")
        want.update(run=str(run_dir), guards=["g1", "g2"], extra_datasets=["x1", "x2"])
    argv = _run(script, tmp_path, env)
    assert argv[:3] == ["-m", "siren", command]
    cfg = config.from_args(command, build_parser(only=command).parse_args(argv[2:]))
    for name, value in want.items():
        got = getattr(cfg, name)
        if isinstance(value, str) and value.startswith(("v-", "x")) and got != value:
            assert os.path.basename(str(got)) == value, name   # a path the driver made absolute
        else:
            assert got == value, name


@pytest.mark.parametrize("script, command", DRIVERS[:4])
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
    from siren.pipeline.train import resolve_config

    monkeypatch.delenv("SIREN_DATA_DIR", raising=False)
    cfg = resolve_config(build_parser(only="train").parse_args(["train"])).as_dict()
    yaml = config.defaults()
    keys = [k for k in config.keys_of("train") if k != "out_dir"]
    assert {k: cfg[k] for k in keys} == {k: yaml[k] for k in keys}
    assert cfg["out_dir"] == str(config.output_dir(yaml["model"]))


def test_relative_siren_data_dir_is_made_absolute(tmp_path):
    """The drivers cd into the repository: a relative $SIREN_DATA_DIR must still mean the user's folder."""
    (tmp_path / "rows").mkdir()
    assert _run("train/run_general_siren.sh", tmp_path, {"SIREN_DATA_DIR": "rows"}) == ["-m", "siren", "train"]
    assert (tmp_path / "argv.env").read_text().strip() == str(tmp_path / "rows")
