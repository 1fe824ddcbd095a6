"""Bad input, round two (issue 40): the classes a hostile user found after the first pass.

`CASES` are commands run in-process through `test_bad_input.run_case` (exit status 2, one
`siren ...` error line matching the pattern, no traceback, no file changed, no backbone
loaded). `ELSEWHERE` lists every other class of the issue with its expected outcome and the
test that reproduces it; `test_every_listed_class_has_its_test` keeps that list honest.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from siren.artifact import CONFIG_NAME, WEIGHTS_NAME
from siren.cli import main
from siren.errors import SirenError
from test_bad_input import Env, _guard_config, env, run_case, write_jsonl  # noqa: F401  (env: a fixture)

REPO = Path(__file__).resolve().parent.parent
SURROGATE = "a\ud800b"


def _streams(e: Env, rows: list[dict]) -> list[str]:
    """eval-stream over SIREN-ready rows written to a file."""
    path = e.root / "streams.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["eval-stream", "--model", str(e.guard), "--source", "jsonl", "--data_file", str(path), "--device", "cpu"]


def _good_stream(i: int = 0) -> dict:
    return {"id": f"s{i}", "prompt": "p", "response": "the quick brown fox", "label": i % 2}


def _think(e: Env, message) -> list[str]:
    """eval-think over one Qwen3GuardTest-shaped row holding `message`."""
    path = e.root / "thinking.jsonl"
    row = {"unique_id": 1, "message": message, "label": "Safe", "source": "Qwen/Qwen3-8B"}
    path.write_text(json.dumps(row) + "\n")
    return ["eval-think", "--model", str(e.guard), "--data_file", str(path), "--device", "cpu"]


def _good_think(e: Env) -> list[str]:
    return _think(e, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])


def _int64_head(e: Env) -> list[str]:
    from safetensors.torch import save_file

    from siren.artifact import read_safetensors

    state = {k: v.to(torch.int64) for k, v in read_safetensors(e.guard / WEIGHTS_NAME).items()}
    save_file(state, str(e.guard / WEIGHTS_NAME))
    return e.score("hi")


def _duplicate_key_yaml(e: Env, monkeypatch) -> list[str]:
    from siren import config

    text = config.DEFAULTS_PATH.read_text() + "\nseed: 7\n"
    path = e.root / "defaults.yaml"
    path.write_text(text)
    monkeypatch.setattr(config, "DEFAULTS_PATH", path)
    return e.train()


def _nan_threshold_yaml(e: Env, monkeypatch) -> list[str]:
    from siren import config

    text = re.sub(r"(?m)^decision_threshold: .*$", "decision_threshold: .nan", config.DEFAULTS_PATH.read_text())
    path = e.root / "defaults.yaml"
    path.write_text(text)
    monkeypatch.setattr(config, "DEFAULTS_PATH", path)
    return e.train()


def _disk_full(e: Env, monkeypatch) -> list[str]:
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("siren.pipeline.train.write_splits", full)
    return e.train()


# (id, setup(env, monkeypatch) -> argv, message pattern)
CASES = [
    # item 4: values checked before the work, not after it
    ("train threshold 1.5", lambda e, m: e.train("--decision_threshold", "1.5"),
     r"--decision_threshold must be a number >= 0 and <= 1 or null, got 1\.5"),
    ("train threshold .nan in YAML", _nan_threshold_yaml, r"defaults\.yaml: decision_threshold must be a number >= 0 and <= 1 or null, got nan"),
    ("eval-think --out a folder", lambda e, m: _good_think(e) + ["--out", str(e.out)],
     r"--out .*/out is a folder: give a file path"),
    ("eval-think --out under a file", lambda e, m: _good_think(e) + ["--out", str(e.data / "aegis" / "test.jsonl" / "r.json")],
     r"--out's folder .*test\.jsonl is a file, not a folder"),
    ("eval-stream --out_dir a file", lambda e, m: _streams(e, [_good_stream()]) + ["--out_dir", str(e.out / "splits.json")],
     r"--out_dir .*splits\.json is a file, not a folder"),
    # item 5: one line where a traceback was
    ("eval-stream row without id", lambda e, m: _streams(e, [_good_stream(), {"response": "x", "label": 0}]),
     r"streams\.jsonl:2: the row has no \"id\""),
    ("eval-stream row not an object", lambda e, m: _streams(e, [_good_stream(), ["x"]]),
     r"streams\.jsonl:2: a row must be a JSON object, got list"),
    ("eval-stream lone surrogate", lambda e, m: _streams(e, [_good_stream(), {**_good_stream(1), "response": SURROGATE}]),
     r"streams\.jsonl:2: response holds a lone surrogate \('\\ud800' at character 1\)"),
    ("eval-stream integer prompt", lambda e, m: _streams(e, [{**_good_stream(), "prompt": 5}]),
     r"streams\.jsonl:1: prompt must be a string or null, got int"),
    ("eval-think message not an object", lambda e, m: _think(e, ["hello"]),
     r"row 1: message\[0\] must be an object \{\"role\", \"content\"\}, got str 'hello'"),
    ("eval-think integer content", lambda e, m: _think(e, [{"role": "assistant", "content": 5}]),
     r"row 1: message\[0\]: content must be a string or null, got int"),
    ("eval-think lone surrogate", lambda e, m: _think(e, [{"role": "assistant", "content": SURROGATE}]),
     r"row 1: message\[0\]: content holds a lone surrogate"),
    ("eval-think message not a list", lambda e, m: _think(e, {"role": "user"}),
     r"row 1: 'message' must be a list of chat turns"),
    ("eval-think --limit -1", lambda e, m: _good_think(e) + ["--limit", "-1"], r"--limit must be an integer >= 1 or null, got -1"),
    ("eval-think --split bogus", lambda e, m: _good_think(e) + ["--split", "bogus"],
     r"--split 'bogus' is not a Qwen3GuardTest split: use thinking"),
    ("guard int64 tensors", lambda e, m: _int64_head(e),
     r"siren\.safetensors: tensor network\.0\.weight holds int64 values; the head's weights must be floating point"),
    ("disk full during training", _disk_full, r"no space left on device .*files written before are intact"),
    # item 6: silent acceptance
    ("eval-stream --graces -3", lambda e, m: _streams(e, [_good_stream()]) + ["--graces", "32", "-3"],
     r"--graces must be a non-empty list of an integer >= 1, got \[32, -3\]"),
    ("eval-stream --max_tokens -1", lambda e, m: _streams(e, [_good_stream()]) + ["--max_tokens", "-1"],
     r"--max_tokens must be an integer >= 1 or null, got -1"),
    ("eval-stream --split bogus", lambda e, m: ["eval-stream", "--model", str(e.guard), "--split", "bogus"],
     r"--split 'bogus' is not a Qwen3GuardTest split with unsafe spans: use one of thinking_loc, response_loc"),
    ("guard format_version 99", lambda e, m: _guard_config(e, lambda c: c["siren"].update(format_version=99))
     or e.score("hi"), r"siren\.format_version is 99, but this SIREN reads format 2 at most: .*newer SIREN"),
    ("YAML duplicated key", _duplicate_key_yaml, r"defaults\.yaml: key 'seed' is given twice in one mapping \(lines \d+ and \d+\)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_round2(case, env, capsys, monkeypatch):  # noqa: F811  (env: the fixture)
    name, setup, pattern = case
    run_case((name, lambda e: setup(e, monkeypatch), pattern, False), env, capsys, monkeypatch)


# Every other class of issue 40: (id, expected outcome, "test file::test name").
ELSEWHERE = [
    ("report.sh code in MODEL", "exit 2, one line naming the backbone; no code runs",
     "test_shell_scripts.py::test_report_sh_takes_model_as_data"),
    ("report.sh quote in MODEL", "exit 2, 'unknown backbone \"it's\"'", "test_shell_scripts.py::test_report_sh_takes_model_as_data"),
    ("report.sh corrupt results.json", "exit 2, 'results.json is not valid JSON ... corrupt'",
     "test_shell_scripts.py::test_report_sh_corrupt_results"),
    ("shell variable in python -c source", "none in any shell script", "test_shell_scripts.py::test_no_shell_variable_inside_python_source"),
    ("drivers before set-up", "exit 2, 'run `bash scripts/setup.sh`'", "test_shell_scripts.py::test_drivers_before_setup_say_how_to_set_up"),
    ("idle and partial-header sockets", "closed after header_timeout_s; a good request answered < 1 s",
     "test_serve_hostile.py::test_idle_and_partial_header_sockets_do_not_starve_a_good_request"),
    ("slow body", "closed after body_timeout_s, no traceback", "test_serve_hostile.py::test_a_slow_body_is_cut_off_and_logs_no_traceback"),
    ("idle kept-alive connection", "closed after idle_timeout_s", "test_serve_hostile.py::test_a_kept_alive_connection_is_closed_when_idle"),
    ("oversized request header", "400, closed (max_header_bytes)", "test_serve_hostile.py::test_an_oversized_header_is_refused"),
    ("refusal log flood", "one line per interval with a count", "test_serve_hostile.py::test_refusals_are_logged_once_per_interval"),
    ("more connections than open files", "cap lowered below the limit", "test_serve_hostile.py::test_the_connection_cap_stays_below_the_open_file_limit"),
    ("websocket never starts", "error 'no start message within', close 1008",
     "test_serve_hostile.py::test_websocket_that_never_starts_is_closed_with_a_message"),
    ("websocket never authenticates", "error, close", "test_serve_hostile.py::test_websocket_without_the_key_in_time_is_closed"),
    ("websocket lone surrogate chunk", "error message, the socket scores the next chunk",
     "test_serve_hostile.py::test_websocket_lone_surrogate_gets_an_error_and_the_socket_goes_on"),
    ("websocket lone surrogate prompt", "error, close 1007", "test_serve_hostile.py::test_websocket_prompt_with_a_lone_surrogate_is_refused"),
    ("/v1/tokenize lone surrogate", "400", "test_serve_hostile.py::test_text_endpoints_answer_400"),
    ("/v1/score {\"text\": null}", "400", "test_serve_hostile.py::test_text_endpoints_answer_400"),
    ("non-ASCII SIREN_API_KEY", "exit 2 before the backbone loads", "test_serve_hostile.py::test_a_key_no_client_can_send_is_refused_at_start"),
    ("stream().feed() lone surrogate", "SirenError, session unchanged, next feed scores",
     "test_bad_input_round2.py::test_feed_refuses_a_lone_surrogate_and_keeps_the_session"),
    ("stale .partial folder", "removed (and named) by the next run; a live one kept",
     "test_bad_input_round2.py::test_stale_partial_folders_are_cleaned"),
    ("disk full in a tensor write", "SirenError naming the file; the old file intact",
     "test_bad_input_round2.py::test_disk_full_while_writing_is_one_line_and_keeps_the_old_file"),
    ("eval-think --out in a missing folder", "exit 0, the folder created", "test_bad_input_round2.py::test_eval_think_out_in_a_missing_folder"),
]


def test_every_listed_class_has_its_test():
    for name, _, where in ELSEWHERE:
        file, test = where.split("::")
        assert re.search(rf"^def {test}\(", (REPO / "tests" / file).read_text(), re.M), f"{name}: {where} is missing"
    print(f"classes: {len(CASES)} commands here, {len(ELSEWHERE)} elsewhere")


def test_feed_refuses_a_lone_surrogate_and_keeps_the_session(env):  # noqa: F811
    from siren.runtime.guard import SirenGuard
    from siren.runtime.serve import StatelessSession

    guard = SirenGuard.from_pretrained(str(env.guard), device="cpu")
    for session in (guard.stream(prompt="p"), StatelessSession(guard, "p")):
        first = session.feed("hello ").score
        with pytest.raises(SirenError, match=r"the chunk holds a lone surrogate \('\\ud800' at character 1\)"):
            session.feed(SURROGATE)
        assert getattr(session, "text", getattr(session, "response", None)) == "hello "
        assert session.feed("world").score == pytest.approx(guard.score(prompt="p", response="hello world").score,
                                                            abs=1e-5)
        assert first == pytest.approx(guard.score(prompt="p", response="hello ").score, abs=1e-5)


def test_stale_partial_folders_are_cleaned(tmp_path):
    import fcntl

    from siren.fileio import staging_dir

    out = tmp_path / "run"
    stale = tmp_path / ".run.dead1234.partial"
    (stale / "sub").mkdir(parents=True)
    live = tmp_path / ".run.live5678.partial"
    live.mkdir()
    other = tmp_path / ".other.x.partial"
    other.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)      # a run still writing
    removed = []
    try:
        with staging_dir(out, on_stale=removed.append) as work:
            assert work.is_dir() and work.name.startswith(".run.") and work.name.endswith(".partial")
            assert removed == [stale] and not stale.exists() and live.is_dir() and other.is_dir()
            removed.clear()
            with staging_dir(out, on_stale=removed.append) as second:   # a concurrent run leaves ours alone
                assert removed == [] and work.is_dir() and second != work
    finally:
        os.close(fd)


def test_disk_full_while_writing_is_one_line_and_keeps_the_old_file(tmp_path):
    from siren.fileio import atomic_write_with

    target = tmp_path / "siren.safetensors"
    target.write_bytes(b"old")

    class SafetensorError(Exception):   # what safetensors raises: only the OS message inside
        pass

    def write(tmp):
        Path(tmp).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    with pytest.raises(SirenError, match=r"no space left on device while writing .*siren\.safetensors"):
        atomic_write_with(target, write)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["siren.safetensors"]


def test_eval_think_out_in_a_missing_folder(env, capsys):  # noqa: F811
    from test_bad_input import good_rows  # noqa: F401  (same world as the cases)

    out = env.root / "new" / "deeper" / "think.json"
    assert main(_good_think(env) + ["--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["split"] == "thinking"


def test_missing_package_is_one_line(tmp_path):
    """A command run by a Python without the dependencies (set-up not run)."""
    code = ("import sys; sys.modules['numpy'] = None; sys.modules['torch'] = None\n"
            "from siren.cli import main; sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "train", "--model", "x"], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "siren train: error: the Python package 'numpy' is not installed" in out.stderr
    assert "bash scripts/setup.sh" in out.stderr
