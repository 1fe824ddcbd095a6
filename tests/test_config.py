"""configs/defaults.yaml is checked; one function maps a model to its run folder, one decides
'registry name, local folder or Hub id'; `siren backbone prepare` downloads Hub backbones."""

from __future__ import annotations

import json
import shutil

import pytest

import siren.config as config
from siren.backbones import model_kind, model_slug
from siren.cli import main
from siren.errors import SirenError


def test_unknown_or_mistyped_default_is_an_error(tmp_path, monkeypatch):
    good = config.DEFAULTS_PATH.read_text()
    path = tmp_path / "defaults.yaml"
    monkeypatch.setattr(config, "DEFAULTS_PATH", path)
    cases = [
        (good + "n_trails: 8\n", "unknown config key.*'n_trails'"),
        (good.replace("n_folds: 5", "n_folds: five"), "n_folds must be an integer >= 2 or null, got 'five'"),
        (good.replace("n_folds: 5", "n_folds: 1"), "n_folds must be an integer >= 2 or null, got 1"),
        (good.replace("pruner: halving", "pruner: hyperband"),
         "pruner must be one of median, halving, none, got 'hyperband'"),
        (good.replace("n_folds: 5", ""), "missing key.*n_folds"),
        (good.replace("  port: 8000", "  port: 8000\n  n_trials: 3"), "serve: unknown config key.*'n_trials'"),
        (good.replace("  max_items: 64", "  max_items: 0"), "max_items must be an integer >= 1, got 0"),
    ]
    for text, error in cases:
        path.write_text(text)
        with pytest.raises(SirenError, match=error):
            config.defaults()
    path.write_text(good)
    with pytest.raises(SirenError, match="siren train: unknown config key.*'thresholds'"):
        config.load("train", {"thresholds": [0.9]})


def test_each_command_reads_its_section_over_the_top_level():
    assert config.load("train").batch_size is None and config.load("score").batch_size == 32
    assert config.load("train").decision_threshold == 0.5 and config.load("serve").decision_threshold is None
    assert config.load("eval-stream").split == "thinking_loc" and config.load("eval-think").split == "thinking"
    assert config.load("serve", {"max_items": 3}).max_items == 3
    with pytest.raises(SirenError, match=r"siren serve: port must be an integer >= 1 and <= 65535"):
        config.load("serve", {"port": 0})
    with pytest.raises(SirenError, match="decision_threshold must be a number >= 0 and <= 1 or null, got nan"):
        config.load("score", {"decision_threshold": float("nan")})
    train = config.load("train", base={"n_trials": 3, "model": None, "host": "x"})   # a run's settings
    assert train.n_trials == 3 and train.model == config.default("model") and not hasattr(train, "host")
    assert train.as_dict()["pruner"] == "halving" and type(train).__name__ == "TrainConfig"


def test_flags_come_from_the_keys_with_their_defaults_in_the_help(capsys):
    from siren.cli import build_parser
    from siren.config_keys import KEYS

    for command in config.COMMANDS:
        parser = build_parser(only=command)
        flags = {a.dest for a in parser._subparsers._group_actions[0].choices[command]._actions}
        assert set(config.keys_of(command)) <= flags, command
    assert {c for k in KEYS for c in k.commands} == set(config.COMMANDS)
    args = build_parser(only="train").parse_args(["train", "--no_scale_by_layer_weight", "--patience", "3"])
    cfg = config.from_args("train", args)
    assert cfg.scale_by_layer_weight is False and cfg.patience == 3 and cfg.n_trials == 32
    bad = build_parser(only="train").parse_args(["train", "--pruner", "hyperband"])
    with pytest.raises(SirenError, match="--pruner must be one of median, halving, none, got 'hyperband'"):
        config.from_args("train", bad)
    with pytest.raises(SystemExit):
        build_parser(only="serve").parse_args(["serve", "--model", "m", "--help"])
    out = capsys.readouterr().out
    assert "--decision_threshold" in out and "(default: the guard's)" in out and "(default: 8000)" in out
    assert "--threshold " not in out


def test_model_kind_and_slug(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "x" / "tiny", tmp_path / "y" / "tiny"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    assert model_kind("smollm2-135m") == "registry" and model_slug("smollm2-135m") == "smollm2-135m"
    assert model_kind("Qwen/Qwen3-0.6B") == "hub" and model_slug("Qwen/Qwen3-0.6B") == "Qwen--Qwen3-0.6B"
    assert model_kind(str(a)) == "local" and model_kind("x/tiny") == "local"  # an existing folder wins
    # Same folder, relative or absolute: one slug; two folders with one name: two slugs.
    assert model_slug("x/tiny") == model_slug(str(a)) != model_slug(str(b))
    assert model_slug(str(a)).startswith("tiny-")
    with pytest.raises(SirenError, match="unknown backbone"):
        model_kind("not a model")


def _fake_guard(folder, marker: str):
    folder.mkdir(parents=True)
    (folder / "siren_config.json").write_text(json.dumps({"marker": marker}))


def test_run_folder_is_found_again_for_every_kind_of_model(tmp_path, monkeypatch):
    """Training writes config.output_dir(model); `siren score --model <same model>` finds it."""
    import siren.runtime.loading as loading

    monkeypatch.setattr(config, "OUTPUT_ROOT", tmp_path / "runs")
    local_a, local_b = tmp_path / "a" / "m", tmp_path / "b" / "m"
    for d in (local_a, local_b):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    models = ["smollm2-135m", "Qwen/Qwen3-0.6B", str(local_a), str(local_b)]
    runs = [config.output_dir(m) for m in models]
    assert len(set(runs)) == 4 and runs[1].name == "Qwen--Qwen3-0.6B_general"
    for m, run in zip(models, runs):
        _fake_guard(run, m)
    for m, run in zip(models, runs):
        assert loading.resolve_guard(m) == str(run)
    # A guard folder given directly is used as is.
    assert loading.resolve_guard(str(runs[0])) == str(runs[0])
    # No run yet: a Hub id is taken to be a Hub repo holding a guard; the others are clear errors.
    shutil.rmtree(runs[1])
    assert loading.resolve_guard("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    shutil.rmtree(runs[2])
    with pytest.raises(SirenError, match="no guard was trained for it as a backbone folder"):
        loading.resolve_guard(str(local_a))
    shutil.rmtree(runs[0])
    with pytest.raises(SirenError, match="no trained guard for backbone 'smollm2-135m'"):
        loading.resolve_guard("smollm2-135m")


def test_backbone_prepare_downloads_hub_backbones(monkeypatch, capsys, tmp_path):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert main(["backbone", "prepare", "qwen3-0.6b"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "snapshot")
    assert main(["backbone", "prepare", "org/some-model", "--revision", "abc123"]) == 0
    assert [(c["repo_id"], c["revision"]) for c in calls] == [("Qwen/Qwen3-0.6B", None), ("org/some-model", "abc123")]
    assert all("*.safetensors" in c["allow_patterns"] for c in calls)

    def failing(**kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    capsys.readouterr()
    assert main(["backbone", "prepare", "qwen3-0.6b"]) == 2
    assert "could not download 'Qwen/Qwen3-0.6B'" in capsys.readouterr().err


def test_backbone_prepare_local_folder_prints_it(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["backbone", "prepare", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path.resolve())
