"""The one-way import rule: serving code never pulls in training code or Optuna."""

import subprocess
import sys


def test_runtime_imports_no_training_code():
    code = ("import sys, siren.runtime.guard, siren.runtime.score_cli, siren.artifact, siren.mlp; "
            "bad = sorted(m for m in sys.modules if m == 'optuna' or m.startswith(('siren.pipeline', 'siren.evaluation'))); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"runtime imported training/evaluation modules: {out.stdout.strip()}"


def test_stage_modules_import_no_entry_point():
    code = ("import sys, siren.pipeline.extract, siren.pipeline.probes, siren.pipeline.select, "
            "siren.pipeline.head, siren.pipeline.tune, siren.features, siren.data, siren.backbones; "
            "bad = sorted(m for m in sys.modules if m in ('siren.cli', 'siren.pipeline.train', 'siren.evaluation.evaluate')); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"stage modules imported entry points: {out.stdout.strip()}"
