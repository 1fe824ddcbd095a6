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
    path.write_text(good + "n_trails: 8\n")
    with pytest.raises(SirenError, match="unknown config key.*'n_trails'"):
        config.defaults()
    path.write_text(good.replace("n_folds: 5", "n_folds: five"))
    with pytest.raises(SirenError, match="n_folds must be int"):
        config.defaults()
    path.write_text(good.replace("n_folds: 5", ""))
    with pytest.raises(SirenError, match="missing key.*n_folds"):
        config.defaults()
    with pytest.raises(SirenError, match="unknown config key"):
        config.resolve(object(), ["thresholds"])


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
