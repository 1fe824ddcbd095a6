"""scripts/bench_streaming.py on a tiny guard: the session, the rescoring and the floor (a bare
KV-cached one-token forward) are all timed, the session's verdicts equal score()'s, and the
floor's forward is really cached."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from test_guard import make_guard

ROOT = Path(__file__).resolve().parent.parent


def load_bench():
    # scripts/ or a subfolder of it (benchmarks may move into one)
    found = sorted(ROOT.glob("scripts/bench_streaming.py")) + sorted(ROOT.glob("scripts/*/bench_streaming.py"))
    path = found[0]
    spec = importlib.util.spec_from_file_location("bench_streaming", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("prompt", ["What happened at the meeting?", ""])
def test_bench_prints_the_floor_beside_the_ratio(tmp_path, tiny_llama_dir, capsys, prompt):
    bench = load_bench()
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, max_length=64)
    out = tmp_path / "bench.json"
    assert bench.main(["--guard", str(folder), "--lengths", "16", "40", "--tokens", "3", "--reps", "2",
                       "--prompt", prompt, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prompt"] == (prompt or None)
    for row in report["rows"]:
        assert row["floor_ms_per_token"] > 0 and row["session_ms_per_token"] > 0
        assert row["session_over_floor_of_medians"] == pytest.approx(
            row["session_ms_per_token"] / row["floor_ms_per_token"])
        assert row["session_over_floor"] > 0 and row["ratio"] > 0
        assert row["max_verdict_diff"] < 1e-4          # the session's verdicts are score()'s
        assert row["context_tokens"] > row["answer_tokens"] if prompt else row["context_tokens"] >= row["answer_tokens"]
    assert "the floor" in capsys.readouterr().out


def test_bench_refuses_a_stream_longer_than_the_guard_reads(tmp_path, tiny_llama_dir):
    bench = load_bench()
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, max_length=64)
    with pytest.raises(SystemExit, match="max_length"):
        bench.main(["--guard", str(folder), "--lengths", "62", "--tokens", "2", "--reps", "1"])


def test_floor_reads_one_token_against_the_cache(tmp_path, tiny_llama_dir):
    bench = load_bench()
    from siren.runtime.guard import SirenGuard

    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    seen = []
    model = guard.extractor.layer_features.model
    handle = model.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(kwargs["input_ids"].shape),
                                             with_kwargs=True)
    try:
        floor = bench.Floor(guard, list(range(5, 25)), 17)
        times = [floor.step() for _ in range(3)]
    finally:
        handle.remove()
    assert len(times) == 3 and all(t > 0 for t in times)
    assert seen == [torch.Size([1, 17])] + [torch.Size([1, 1])] * 3
