"""The one-way import rule: serving code never pulls in training code or Optuna."""

import subprocess
import sys


def test_runtime_imports_no_training_code():
    code = ("import sys, siren.runtime.guard, siren.runtime.score_cli, siren.runtime.loading, siren.artifact, siren.mlp; "
            "bad = sorted(m for m in sys.modules if m == 'optuna' or m.startswith(('siren.pipeline', 'siren.evaluation'))); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"runtime imported training/evaluation modules: {out.stdout.strip()}"


def test_server_imports_no_training_code():
    """`siren serve` (module, CLI parser and the app with its web framework) stays on the runtime side."""
    code = ("import sys, importlib.util; from siren.cli import build_parser; build_parser(only='serve'); "
            "from siren.runtime import serve; "
            "importlib.util.find_spec('fastapi') and serve.create_app(type('G', (), {'default_threshold': 0.5})(), model_name='x'); "
            "bad = sorted(m for m in sys.modules if m == 'optuna' or m.startswith(('siren.pipeline', 'siren.evaluation'))); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the server imported training/evaluation modules: {out.stdout.strip()}"


def test_stage_modules_import_no_entry_point():
    code = ("import sys, siren.pipeline.extract, siren.pipeline.probes, siren.pipeline.select, "
            "siren.pipeline.head, siren.pipeline.tune, siren.features, siren.data, siren.backbones; "
            "bad = sorted(m for m in sys.modules if m in ('siren.cli', 'siren.pipeline.train', 'siren.evaluation.evaluate')); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"stage modules imported entry points: {out.stdout.strip()}"
