"""The shell drivers as a hostile user meets them (issue 40, items 1 and 5): values reach Python
as arguments, never as source; a bad value or a missing set-up is one line, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DRIVERS = ["train/run_general_siren.sh", "test/eval_general_siren.sh", "test/generalization/eval_gen_siren.sh",
           "test/streaming/run_streaming_siren.sh", "scripts/report.sh"]


def shell_scripts() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.sh"], cwd=REPO, capture_output=True, text=True)
    files = [REPO / f for f in out.stdout.split()] if out.returncode == 0 else sorted(REPO.rglob("*.sh"))
    return [f for f in files if ".venv" not in f.parts and f.is_file()]


def python_sources(script: str) -> list[tuple[int, str]]:
    """(line, source) of every `python -c "..."` / `"$PY" -c '...'` argument and every heredoc fed
    to a python (`python - <<EOF`), with the heredoc's quoting kept (an unquoted delimiter expands)."""
    found = []
    for m in re.finditer(r"""(?:python3?|"?\$\{?PY\}?"?|\.venv/bin/python"?)\s+(?:-\w+\s+)*-c\s+(["'])""", script):
        quote, start = m.group(1), m.end()
        end = start
        while end < len(script) and not (script[end] == quote and script[end - 1] != "\\"):
            end += 1
        found.append((script.count("\n", 0, m.start()) + 1, quote + script[start:end] + quote))
    for m in re.finditer(r"""(?:python3?|"?\$\{?PY\}?"?)\s+-[^\n]*?<<-?\s*(['"]?)(\w+)\1[^\n]*\n""", script):
        quoted, tag = bool(m.group(1)), m.group(2)
        body_end = script.find(f"\n{tag}\n", m.end())
        body = script[m.end():body_end if body_end >= 0 else len(script)]
        found.append((script.count("\n", 0, m.start()) + 1, ("'" if quoted else '"') + body))
    return found


def expands_a_variable(source: str) -> bool:
    """A double-quoted (or unquoted-heredoc) source with $NAME, ${...} or $(...) in it."""
    return source.startswith('"') and re.search(r"(?<!\\)\$(\w|\{|\()", source) is not None


def test_no_shell_variable_inside_python_source():
    scripts = shell_scripts()
    assert len(scripts) >= 5
    bad = [f"{s.relative_to(REPO)}:{line}: {src[:80]}" for s in scripts
           for line, src in python_sources(s.read_text()) if expands_a_variable(src)]
    assert not bad, "shell values pasted into Python source (pass them as arguments):\n" + "\n".join(bad)


def test_the_scan_finds_what_it_must():
    """The scan itself: it sees the old report.sh line, an unquoted heredoc, and lets argv pass."""
    old = """RUN="$("$PY" -c "from siren.config import output_dir; print(output_dir('$MODEL'))")"\n"""
    assert [expands_a_variable(s) for _, s in python_sources(old)] == [True]
    heredoc = '"$PY" - "$ROOT" <<EOF\nprint("$MODEL")\nEOF\n'
    assert [expands_a_variable(s) for _, s in python_sources(heredoc)] == [True]
    safe = """python3 -c 'import sys; print(sys.argv[1])' "$MODEL"\n"$PY" - "$ROOT" <<'PY'\nprint("$x")\nPY\n"""
    assert [expands_a_variable(s) for _, s in python_sources(safe)] == [False, False]


def run_report(tmp_path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts/report.sh")], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "SIREN_PYTHON": sys.executable, "PYTHONPATH": str(REPO), **env},
                          timeout=120)


def test_report_sh_takes_model_as_data(tmp_path):
    marker = tmp_path / "ran"
    for model in (f"smollm2-135m')); import os; open('{marker}', 'w'); print(('", "it's"):
        out = run_report(tmp_path, MODEL=model)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip().startswith("siren: error: unknown backbone") and len(out.stderr.strip().splitlines()) == 1
        assert not marker.exists()


def test_report_sh_corrupt_results(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"config": {"data_dir": ')
    out = run_report(tmp_path, RUN=str(run))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.fullmatch(r"siren: error: .*results\.json is not valid JSON \(.*\): the file is corrupt; train again "
                        r"or set RUN to another run folder\n", out.stderr), out.stderr
    (run / "results.json").write_text('["not", "a run"]')
    out = run_report(tmp_path, RUN=str(run))
    assert out.returncode == 2 and 'has no "config" object' in out.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_drivers_before_setup_say_how_to_set_up(tmp_path, driver):
    """A Python without the dependencies: `-S` drops site-packages, as a bare python3 has them not."""
    bare = tmp_path / "python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"config": {}}')
    out = subprocess.run(["bash", str(REPO / driver)], capture_output=True, text=True, timeout=120,
                         env={**env, "SIREN_PYTHON": str(bare), "MODEL": "smollm2-135m", "RUN": str(run)})
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "bash scripts/setup.sh" in out.stderr, out.stderr
    assert len([l for l in out.stderr.splitlines() if "error" in l]) == 1, out.stderr
