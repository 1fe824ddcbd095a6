"""The built wheel works without the checkout: build it, install it (not editable) into a fresh
venv, and run `siren --version`, `siren score` on a tiny guard and `siren serve` /healthz.

The fresh venv borrows torch & co. from the running interpreter through a .pth file instead of
downloading them; the checkout's own `siren` must not be importable there (no PYTHONPATH, cwd
outside the checkout; a .pth path line does not run that folder's editable-install hooks), and
the test asserts that the `siren` it ran is the one inside the venv. Marked `wheel` (deselect
with `-m "not wheel"` where pip cannot build offline); skipped only when setuptools is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from test_guard import make_guard

pytestmark = pytest.mark.wheel
REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "siren", "configs")


def _run(cmd, *, cwd, env, timeout=120, check=True):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(venv folder, env for its commands, a work folder outside the checkout)."""
    pytest.importorskip("setuptools", reason="pip wheel --no-build-isolation needs setuptools here")
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # a copy, so the build writes no build/ or *.egg-info into the checkout
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(
            REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (REPO / name).is_dir() else {}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", root / "dist", src], cwd=root, env=env, timeout=300)
    (wheel,) = (root / "dist").glob("siren_guard-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, env=env)
    py = venv / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=root, env=env).stdout.strip())
    # After the venv's own site-packages on sys.path, so the wheel's siren comes first.
    (purelib / "zz_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=root, env=env, timeout=300)
    work = root / "work"
    work.mkdir()
    return venv, env, work


def test_installed_package_is_the_wheel(venv):
    folder, env, work = venv
    code = ("import json, siren, siren.config as c, siren.backbones as b, siren.paths as p;"
            "print(json.dumps([siren.__file__, str(c.DEFAULTS_PATH), str(b.REGISTRY_PATH),"
            " str(c.output_dir('smollm2-135m')), str(p.config_file('paper_results.yaml'))]))")
    out = json.loads(_run([folder / "bin" / "python", "-c", code], cwd=work, env=env).stdout)
    package = Path(out[0]).resolve().parent
    assert package.is_relative_to(folder.resolve()), f"imported {out[0]}, not the wheel in {folder}"
    for shipped in (out[1], out[2], out[4]):
        assert Path(shipped).resolve().is_relative_to(package / "configs"), shipped
    # Run folders go where the user runs siren, never into the installed package.
    assert Path(out[3]) == work / "train" / "probes" / "optuna" / "smollm2-135m_general"
    wanted = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "siren").rglob("__init__.py")}
    shipped = {p.parent.relative_to(package.parent).as_posix() for p in package.rglob("__init__.py")}
    assert wanted <= shipped, f"subpackages missing from the wheel (pyproject.toml packages): {wanted - shipped}"
    assert (package / "runtime" / "static" / "index.html").is_file()


def test_version_score_and_serve(venv, tiny_llama_dir):
    folder, env, work = venv
    siren = folder / "bin" / "siren"
    from siren import __version__

    assert _run([siren, "--version"], cwd=work, env=env).stdout.strip() == f"siren {__version__}"
    guard, *_ = make_guard(work / "guard", tiny_llama_dir)
    line = _run([siren, "score", "--model", guard, "--device", "cpu", "some text to score"], cwd=work, env=env).stdout
    result = json.loads(line.strip().splitlines()[-1])
    assert 0.0 <= result["score"] <= 1.0 and result["threshold"] == 0.5

    port = _free_port()
    server = subprocess.Popen([str(siren), "serve", "--model", str(guard), "--device", "cpu", "--host", "127.0.0.1",
                               "--port", str(port), "--log_level", "warning"],
                              cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health, deadline = None, time.monotonic() + 60
        while health is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    health = json.loads(resp.read())
            except OSError:
                time.sleep(0.3)
        assert health is not None, f"no /healthz within 60 s (exit {server.poll()})"
        assert health["status"] == "ok", health
    finally:
        server.kill()
        server.wait(timeout=10)
