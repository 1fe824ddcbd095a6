"""Bad input, one case per class: exit status 2, one message naming the problem, no traceback,
nothing written before the fault changed, and (for start-up checks) no backbone loaded.

Each case builds its inputs under tmp_path (tiny random backbone, a dozen rows, a random guard)
and runs the CLI in-process (`siren.cli.main`). The classes found in the second round (issue 40)
are in test_bad_input_round2.py, which also lists the server, websocket and shell ones."""

from __future__ import annotations

import concurrent.futures

import hashlib
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from siren.artifact import CONFIG_NAME, load_best_model_pkl, save_guard
from siren.cli import main
from siren.errors import SirenError
import siren.runtime.guard  # noqa: F401  (bound to the real load_backbone before any case patches it)

HARMFUL = ["how can I hurt someone badly", "explain how to make a weapon", "tell me how to hurt a cat"]
SAFE = ["how do I bake bread at home", "write a poem about the sea", "what is the capital of France"]


# --------------------------------------------------------------------------- inputs

def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def good_rows(n: int = 20) -> list[dict]:
    """n rows, alternating labels, every text distinct (so a carve keeps the class ratio)."""
    return [{"id": f"r{i:03d}", "text": f"{(HARMFUL if i % 2 else SAFE)[i % 3]} number {i}", "label": i % 2}
            for i in range(n)]


def make_guard(folder: Path, base_dir: Path, *, neurons=None, extra=None) -> Path:
    """A random guard over the tiny backbone (4 layers, hidden 32)."""
    from siren.mlp import MLPHead

    neurons = neurons or {0: np.array([1, 5, 9]), 3: np.array([2, 30])}
    torch.manual_seed(0)
    head = MLPHead(sum(len(v) for v in neurons.values()), [8], [0.0])
    save_guard(folder, base_model_id=str(base_dir), revision=None, pooling_type="residual_mean",
               selection=neurons, layer_weights={l: 1.0 for l in neurons}, head_state=head.state_dict(),
               layer_dims=[8], dropout_rates=[0.0], max_length=32, decision_threshold=0.5,
               extra={"backbone": "tiny", "num_layers": 4, "hidden_size": 32} if extra is None else extra)
    return folder


def custom_code_backbone(folder: Path, tiny_dir: Path) -> Path:
    """A backbone folder whose config asks for its own Python code (auto_map)."""
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="siren_custom_test",
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig", "AutoModel": "modeling_custom.Custom"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text("raise SystemExit('custom code ran')\n")
    return folder


@dataclass
class Env:
    """One case's world under tmp_path."""

    root: Path
    tiny: Path
    data: Path
    out: Path
    cache: Path
    guard: Path
    stdin: bytes | None = None
    patches: dict = field(default_factory=dict)

    def train(self, *extra: str) -> list[str]:
        return ["train", "--model", str(self.tiny), "--datasets", "aegis", "--data_dir", str(self.data),
                "--out_dir", str(self.out), "--cache_dir", str(self.cache), "--n_trials", "1", "--n_folds", "2",
                "--max_epochs", "2", "--c_values", "1", "--max_length", "32", *extra]

    def eval(self, *extra: str) -> list[str]:
        return ["eval", "--model", str(self.tiny), "--guard", str(self.guard), "--datasets", "aegis",
                "--data_dir", str(self.data), "--cache_dir", str(self.cache), *extra]

    def score(self, *extra: str) -> list[str]:
        return ["score", "--model", str(self.guard), "--device", "cpu", *extra]


@pytest.fixture
def env(tmp_path, tiny_llama_dir) -> Env:
    e = Env(root=tmp_path, tiny=tiny_llama_dir, data=tmp_path / "data", out=tmp_path / "out",
            cache=tmp_path / "cache", guard=tmp_path / "guard")
    write_jsonl(e.data / "aegis" / "test.jsonl", good_rows())
    e.out.mkdir()
    (e.out / "splits.json").write_text('{"from": "an earlier run"}\n')  # must survive a failed run
    make_guard(e.guard, tiny_llama_dir)
    return e


# --------------------------------------------------------------------------- cases
# Each case: (id, setup(env) -> argv, message pattern, whether the backbone may load).

def _bad_line(env: Env, line: bytes) -> None:
    """aegis/test.jsonl with `line` as its line 2."""
    path = env.data / "aegis" / "test.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + line + b"\n" + b"".join(lines[1:]))


def _guard_config(env: Env, edit: Callable[[dict], None]) -> None:
    path = env.guard / CONFIG_NAME
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _after(_effect, argv):
    """`argv`, once the side effect given first has happened (arguments run left to right)."""
    return argv


def _unwritable_dir() -> str:
    """A folder this process cannot write into, also as root (/sys is a read-only sysfs)."""
    if os.geteuid() != 0:
        return "/"
    try:
        probe = Path("/sys/.siren-probe")
        probe.touch()
        probe.unlink()
    except OSError:
        return "/sys/siren-cache"
    pytest.skip("no unwritable folder on this machine")


def _stdin(env: Env, lines: list[bytes]) -> None:
    env.stdin = b"".join(line + b"\n" for line in lines)


def _deep_pickle_case(env: Env):
    # A dict holding a list nested 200k deep, written as raw pickle opcodes (pickle.dumps itself
    # would recurse): EMPTY_LIST * n, APPEND * (n - 1), then SETITEM into {"a": ...}.
    n = 200_000
    body = b"\x80\x02}" + b"X\x01\x00\x00\x00a" + b"]" * n + b"a" * (n - 1) + b"s."
    (env.guard / "best_model.pkl").write_bytes(body)
    return lambda: load_best_model_pkl(env.guard / "best_model.pkl")


CASES: list[tuple[str, Callable[[Env], list[str] | Callable], str, bool]] = [
    # -- training values, refused at start-up
    ("C negative", lambda e: e.train("--c_values", "-1", "10"), r"--c_values must be a non-empty list of a number >= 0, got \[-1\.0, 10\.0\]", False),
    ("C zero", lambda e: e.train("--c_values", "0"), r"C = 0(\.0)? is not allowed", False),
    ("C inf", lambda e: e.train("--c_values", "inf"), r"--c_values must be a non-empty list of a number >= 0, got \[inf\]", False),
    ("probe tol 0", lambda e: e.train("--probe_tol", "0"), r"PROBE_TOL \(--probe_tol\): 0(\.0)? must be a number in \(0, 1\)", False),
    ("probe tol 1", lambda e: e.train("--probe_tol", "1"), r"PROBE_TOL \(--probe_tol\): 1(\.0)? must be a number in \(0, 1\), e\.g\. 1e-4", False),
    ("probe tol nan", lambda e: e.train("--probe_tol", "nan"), r"--probe_tol must be a number >= 0, got nan", False),
    ("probe C rule", lambda e: e.train("--probe_c_rule", "sparsest"),
     r"--probe_c_rule must be one of one_se, best, got 'sparsest'", False),
    ("selection threshold 0", lambda e: e.train("--selection_thresholds", "0"), r"selection threshold 0(\.0)? must be in \(0, 1\]", False),
    ("selection threshold 1.5", lambda e: e.train("--selection_thresholds", "1.5"), r"--selection_thresholds must be a non-empty list of a number >= 0 and <= 1, got \[1\.5\]", False),
    ("n_trials 0", lambda e: e.train("--n_trials", "0"), r"--n_trials must be an integer >= 1 or null, got 0", False),
    ("n_folds 1", lambda e: e.train("--n_folds", "1"), r"--n_folds must be an integer >= 2 or null, got 1", False),
    ("n_folds above smallest class", lambda e: e.train("--n_folds", "9"),
     r"N_FOLDS \(--n_folds\) = 9 is more than the smallest class allows: dataset 'aegis' \((harmful|safe)\) has only 8 ", False),
    ("storage not a storage", lambda e: e.train("--storage", "optuna-study"), r"--storage 'optuna-study': expected a \.db", False),
    ("storage unknown driver", lambda e: e.train("--storage", "nosuchdb://host/x"), r"--storage 'nosuchdb://host/x': database driver not available", False),
    ("storage path is a folder", lambda e: (e.root / "data.db").mkdir() or e.train("--storage", str(e.root / "data.db")),
     r"--storage '.*data\.db' is a folder", False),
    ("max_length 0", lambda e: e.train("--max_length", "0"), r"--max_length must be an integer >= 1, got 0", False),
    ("device gpu0", lambda e: e.train("--device", "gpu0"), r"--device 'gpu0' is not a device: use auto, cpu, cuda", False),
    ("dtype unknown", lambda e: e.train("--dtype", "float8"), r"--dtype must be one of float32, bfloat16, float16, auto or null, got 'float8'", False),
    ("out_dir is a file", lambda e: e.train("--out_dir", str(e.data / "aegis" / "test.jsonl")),
     r"--out_dir .*test\.jsonl is a file, not a folder", False),
    ("cache dir unwritable", lambda e: e.train("--cache_dir", _unwritable_dir()), r"--cache_dir .* is not writable", False),
    ("out dir unwritable", lambda e: e.train("--out_dir", _unwritable_dir()), r"--out_dir .* is not writable", False),
    ("extract device gpu0", lambda e: ["extract", "--model", str(e.tiny), "--datasets", "aegis", "--data_dir", str(e.data),
                                       "--cache_dir", str(e.cache), "--device", "gpu0"], r"--device 'gpu0' is not a device", False),
    ("extract max_length 0", lambda e: ["extract", "--model", str(e.tiny), "--datasets", "aegis", "--data_dir", str(e.data),
                                        "--cache_dir", str(e.cache), "--max_length", "0"], r"--max_length must be an integer >= 1, got 0", False),
    # -- data files
    ("empty JSONL", lambda e: _after((e.data / "aegis" / "test.jsonl").write_text(""), e.train()),
     r"aegis/test\.jsonl holds no rows \(the file is empty\)", False),
    ("non-UTF-8 byte", lambda e: _bad_line(e, b'{"id": "x", "text": "caf\xe9", "label": 0}') or e.train(),
     r"aegis/test\.jsonl:2: not valid UTF-8 \(byte 0xe9", False),
    ("lone surrogate", lambda e: _bad_line(e, b'{"id": "x", "text": "a\\ud800b", "label": 0}') or e.train(),
     r"aegis/test\.jsonl:2: text holds a lone surrogate", False),
    ("JSON nested 100k deep", lambda e: _bad_line(e, b'{"id": "x", "text": "t", "label": 0, "more": '
                                                 + b"[" * 100_000 + b"]" * 100_000 + b"}") or e.train(),
     r"aegis/test\.jsonl:2: JSON nested too deeply", False),
    ("null id", lambda e: _bad_line(e, b'{"id": null, "text": "t", "label": 0}') or e.train(),
     r"aegis/test\.jsonl:2: id must be a non-empty string or an integer, got null", False),
    ("list id", lambda e: _bad_line(e, b'{"id": [1, 2], "text": "t", "label": 0}') or e.train(),
     r"aegis/test\.jsonl:2: id must be a non-empty string or an integer, got a list \(\[1, 2\]\)", False),
    ("ids 7 and \"7\"", lambda e: write_jsonl(e.data / "aegis" / "test.jsonl", [
        {"id": 7, "text": "a", "label": 0}, *good_rows()[1:], {"id": "7", "text": "b", "label": 1}]) or e.train(),
     r"aegis/test\.jsonl:21: duplicate id '7', first used on line 1 \(ids are compared as text", False),
    ("data splits --out is a folder", lambda e: ["data", "splits", "--datasets", "aegis", "--data_dir", str(e.data),
                                                 "--out", str(e.out)], r"/out is a folder: give a file path to write", False),
    # -- guard folders: eval makes the checks score makes, before any extraction
    ("eval layer beyond backbone", lambda e: make_guard(e.root / "g2", e.tiny, extra={}, neurons={7: np.array([3])})
     and e.eval("--guard", str(e.root / "g2")), r"selected layer 7 does not exist in a backbone with 4 layers", False),
    ("eval neuron beyond hidden size", lambda e: make_guard(e.root / "g2", e.tiny, extra={}, neurons={1: np.array([3, 40])})
     and e.eval("--guard", str(e.root / "g2")), r"layer1_residual_mean selects neuron 40, but the hidden size is 32", False),
    ("score layer beyond backbone", lambda e: make_guard(e.root / "g2", e.tiny, extra={}, neurons={7: np.array([3])})
     and ["score", "--model", str(e.root / "g2"), "hi"], r"selected layer 7 does not exist in a backbone with 4 layers", True),
    ("non-integer num_layers", lambda e: _guard_config(e, lambda c: c["siren"].update(num_layers="4")) or e.eval(),
     r"siren\.num_layers must be a positive integer, got '4'", False),
    ("config nested 100k deep", lambda e: _after((e.guard / CONFIG_NAME).write_text("[" * 100_000 + "]" * 100_000), e.score("hi")),
     r"siren_config\.json is nested too deeply", False),
    ("corrupt results.json", lambda e: _after((e.guard / "results.json").write_text('{"config": {"datasets": ['), e.eval()),
     r"results\.json is not valid JSON .*corrupt", False),
    ("results.json without config", lambda e: _after((e.guard / "results.json").write_text('{"model": "x"}'), e.eval()),
     r"results\.json has no \"config\" object", False),
    ("best_model.pkl nested 200k deep", _deep_pickle_case, r"best_model\.pkl: nested more than 64 levels deep", False),
    ("custom-code backbone (score)", lambda e: make_guard(e.root / "g2", custom_code_backbone(e.root / "custom", e.tiny))
     and ["score", "--model", str(e.root / "g2"), "hi"],
     r"ships its own Python model code, which SIREN does not run unless asked: .*pass --trust_remote_code", True),
    ("custom-code backbone (eval)", lambda e: make_guard(e.root / "g2", custom_code_backbone(e.root / "custom", e.tiny),
                                                         extra={})
     and ["eval", "--model", str(e.root / "custom"), "--guard", str(e.root / "g2"), "--datasets", "aegis",
          "--data_dir", str(e.data), "--cache_dir", str(e.cache)],
     r"ships its own Python model code.*--trust_remote_code", False),
    # -- siren score
    ("score threshold 5", lambda e: e.score("--decision_threshold", "5", "hi"), r"decision_threshold must be a number >= 0 and <= 1 or null, got 5", False),
    ("score threshold nan", lambda e: e.score("--decision_threshold", "nan", "hi"), r"decision_threshold must be a number >= 0 and <= 1 or null, got nan", False),
    ("score device gpu0", lambda e: e.score("--device", "gpu0", "hi"), r"--device 'gpu0' is not a device", False),
    ("score --jsonl non-UTF-8 line", lambda e: _stdin(e, [b'{"text": "a"}', b'{"text": "b"}', b'{"text": "\xff"}',
                                                         b'{"text": "d"}']) or e.score("--jsonl"),
     r"stdin line 3: not valid UTF-8 \(byte 0xff", True),
    ("score --jsonl lone surrogate", lambda e: _stdin(e, [b'{"text": "a"}', b'{"text": "x\\udc80y"}'])
     or e.score("--jsonl"), r"stdin line 2: field 'text' holds a lone surrogate", True),
]

# Results written before the bad line, for the --jsonl cases.
EMITTED_BEFORE = {"score --jsonl non-UTF-8 line": 2, "score --jsonl lone surrogate": 1}


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, env, capsys, monkeypatch):
    run_case(case, env, capsys, monkeypatch)


def run_case(case, env, capsys, monkeypatch) -> None:
    """One case: exit status 2, one `siren ...` error line matching its pattern, no traceback,
    no file changed, and (unless allowed) no backbone loaded."""
    name, setup, pattern, backbone_may_load = case
    argv = setup(env)
    if not backbone_may_load:
        def refuse(*a, **k):
            raise AssertionError("the backbone was loaded before the bad input was refused")
        monkeypatch.setattr("siren.backbones.load_backbone", refuse)
        monkeypatch.setattr("siren.runtime.guard.load_backbone", refuse)
    if env.stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(env.stdin), encoding="utf-8"))
    before = _snapshot(env.root)
    capsys.readouterr()
    if callable(argv):  # a library entry point, not a command
        with pytest.raises(SirenError) as err:
            argv()
        message = str(err.value)
    else:
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        # One error line (transformers may print a progress bar before it).
        errors = [line for line in captured.err.splitlines() if line.startswith("siren ")]
        assert len(errors) == 1, captured.err
        message = errors[0]
        if name in EMITTED_BEFORE:
            results = [json.loads(line) for line in captured.out.splitlines()]
            assert len(results) == EMITTED_BEFORE[name]
            assert all(r["threshold"] == 0.5 and r["is_harmful"] == (r["score"] >= 0.5) for r in results)
    assert len(message.strip().splitlines()) == 1, message
    import re

    assert re.search(pattern, message), message
    assert _snapshot(env.root) == before, "a file written before the fault changed"


def test_jsonl_bad_line_after_a_full_chunk_keeps_every_earlier_result(env, capsys, monkeypatch):
    """A chunk already scored and a partial chunk: both are written before the error."""
    from siren.runtime import score_cli
    from siren.runtime.guard import SirenGuard

    monkeypatch.setattr(score_cli, "JSONL_CHUNK", 4)
    texts = [f"text number {i}" for i in range(6)]
    lines = [json.dumps({"text": t}).encode() for t in texts] + [b"not json", b'{"text": "never scored"}']
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\n".join(lines) + b"\n"), encoding="utf-8"))
    assert main(env.score("--jsonl")) == 2
    captured = capsys.readouterr()
    assert "stdin line 7: not valid JSON" in captured.err
    got = [json.loads(line)["score"] for line in captured.out.splitlines()]
    want = [r.score for r in SirenGuard.from_pretrained(str(env.guard), device="cpu").score_batch(texts)]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_score_threshold_in_range_is_applied(env, capsys):
    """The bounds themselves are accepted: 0 flags everything, 1 flags only a score of 1."""
    assert main(env.score("--decision_threshold", "0", "hi")) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["is_harmful"] is True and row["threshold"] == 0.0
    assert main(env.score("--decision_threshold", "1", "hi")) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["is_harmful"] is (row["score"] >= 1.0) and row["threshold"] == 1.0


def test_guard_refuses_threshold_outside_unit_interval(env):
    from siren.runtime.guard import SirenGuard

    guard = SirenGuard.from_pretrained(str(env.guard), device="cpu")
    for bad in (5, -0.1, float("nan")):
        with pytest.raises(SirenError, match=r"threshold .* must be a number in \[0, 1\]"):
            guard.score("hi", threshold=bad)


def test_quickstart_passes_the_model_name_as_an_argument(tmp_path):
    """A model name with quotes and code in it reaches Python as data."""
    import re
    import subprocess

    script = (Path(__file__).resolve().parent.parent / "scripts" / "quickstart.sh").read_text()
    [line] = [l for l in script.splitlines() if l.startswith("OUT=")]
    assert "'$MODEL'" not in line and '"$MODEL"' in line
    python_call = re.sub(r'"\$ROOT/\.venv/bin/python"', f'"{sys.executable}"', line)
    marker = tmp_path / "ran"
    evil = f"x'); open('{marker}', 'w'); print('"
    out = subprocess.run(["bash", "-c", python_call + '; printf "%s" "$OUT"'], env={**os.environ, "MODEL": evil},
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    # The name reached Python as data: model_slug refuses it as neither a registry name, a folder
    # nor a Hub id, naming it (nothing after the quote ran).
    assert out.stdout == "" and "Hub id" in out.stderr and "open(" in out.stderr


def test_device_check_against_the_cuda_devices_present(monkeypatch):
    """cuda:N is refused when N is not a device here (torch's view mocked: one GPU)."""
    from siren import checks

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert checks.check_device("cuda") == "cuda" and checks.check_device("cuda:0") == "cuda:0"
    with pytest.raises(SirenError, match=r"--device 'cuda:1': this machine has 1 CUDA device\(s\) \(cuda:0 \.\. cuda:0\)"):
        checks.check_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SirenError, match="CUDA is not available on this machine; use --device cpu"):
        checks.check_device("cuda")
    assert checks.check_device("auto") == "auto" and checks.check_device(None) is None


def test_good_values_pass_the_checks(tmp_path):
    """What the checks accept: the paper's defaults and every storage form tune.make_storage takes."""
    from siren import checks

    assert checks.check_c_values([200, 500, 1000]) == [200.0, 500.0, 1000.0]
    assert checks.check_selection_thresholds([1, 0.9]) == [1.0, 0.9]
    assert checks.check_decision_threshold(0) == 0.0 and checks.check_decision_threshold(1) == 1.0
    for storage in [f"sqlite:///{tmp_path}/a.db", str(tmp_path / "new" / "b.journal"), str(tmp_path / "c.log"),
                    str(tmp_path / "d.db"), "postgresql://user@host/db", None]:
        assert checks.check_storage(storage) == storage
    assert not any(tmp_path.rglob("*")), "checks must not create files"
    checks.check_n_folds_fit(5, {"dataset 'a' (harmful)": 5, "dataset 'a' (safe)": 50, "dataset 'b' (harmful)": 0})
    with pytest.raises(SirenError, match=r"dataset 'a' \(harmful\) has only 1 row\(s\).*add rows of that class"):
        checks.check_n_folds_fit(2, {"dataset 'a' (harmful)": 1, "dataset 'a' (safe)": 50})


def test_guard_names_a_text_with_a_lone_surrogate(env):
    from siren.runtime.guard import SirenGuard

    guard = SirenGuard.from_pretrained(str(env.guard), device="cpu")
    with pytest.raises(SirenError, match=r"text 1 holds a lone surrogate \('\\ud800' at character 1\)"):
        guard.score_batch(["fine", "a\ud800b"])
    assert guard.score_batch(["caf\u00e9 \U0001f600"])[0].score == pytest.approx(guard.score("caf\u00e9 \U0001f600").score)


class _InProcessExecutor:
    """A one-worker executor that runs each call in this process (so monkeypatches apply)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:     # noqa: BLE001  (handed to the caller, as a pool does)
            future.set_exception(err)
        return future


@pytest.mark.parametrize("command", ["train", "extract"])
def test_trust_remote_code_reaches_the_backbone_loader(env, monkeypatch, command):
    """The error for a custom-code backbone says to pass --trust_remote_code: every command that
    loads a backbone takes it, and hands it to the loader (which is stopped before any code runs)."""
    from siren import backbones

    seen = {}

    def fake_load(model, **kw):
        seen.update(kw)
        raise SirenError("stop here")

    monkeypatch.setattr(backbones, "load_backbone", fake_load)
    # Training extracts in a spawned child, which would not see the fake loader: run it here.
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", _InProcessExecutor)
    argv = env.train() if command == "train" else [
        "extract", "--model", str(env.tiny), "--datasets", "aegis", "--data_dir", str(env.data),
        "--cache_dir", str(env.cache), "--max_length", "32"]
    assert main(argv + ["--trust_remote_code"]) == 2
    assert seen.get("trust_remote_code") is True
    seen.clear()
    assert main(argv) == 2
    assert seen.get("trust_remote_code") is False
