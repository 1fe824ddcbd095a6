"""`dtype auto` on a CPU: decided by a timed probe (mocked here), cached per machine, said once;
no probe without bf16 instructions, nor for an explicit dtype."""

import json
from types import SimpleNamespace

import pytest
import torch

from siren import backbones, dtype_auto


@pytest.fixture
def bf16_cpu(monkeypatch, tmp_path):
    """A CPU with bf16 instructions and an empty siren cache dir."""
    monkeypatch.setenv("SIREN_CPU_FLAGS", "avx512_bf16")
    monkeypatch.setenv("SIREN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / dtype_auto.CACHE_NAME


def speeds(bf16, fp32):
    calls = []

    def measure(*args):
        calls.append(args)
        return {"bfloat16": bf16, "float32": fp32, "unit": "tok/s"}
    return measure, calls


def test_decide_measures_once_then_reads_the_cache(tmp_path, capsys):
    measure, calls = speeds(900.0, 700.0)
    assert dtype_auto.decide("backbone m", "cpu", measure, tmp_path) == "bfloat16"
    assert "bf16 900 tok/s, fp32 700 tok/s -> bfloat16 (cached in" in capsys.readouterr().err
    cached = json.loads((tmp_path / dtype_auto.CACHE_NAME).read_text())
    key = dtype_auto.cache_key("backbone m", "cpu")
    assert cached[key]["dtype"] == "bfloat16" and torch.__version__ in key and dtype_auto.cpu_model() in key

    def broken():
        raise AssertionError("measured again")
    assert dtype_auto.decide("backbone m", "cpu", broken, tmp_path) == "bfloat16"   # deterministic given the cache
    assert len(calls) == 1
    # another backbone or device is measured on its own
    slower, _ = speeds(500.0, 700.0)
    assert dtype_auto.decide("backbone other", "cpu", slower, tmp_path) == "float32"
    assert len(json.loads((tmp_path / dtype_auto.CACHE_NAME).read_text())) == 2


def test_bf16_must_win_by_the_margin(tmp_path):
    close, _ = speeds(720.0, 700.0)           # 3% faster: not worth the precision
    assert dtype_auto.decide("a", "cpu", close, tmp_path) == "float32"
    clear, _ = speeds(770.0, 700.0)
    assert dtype_auto.decide("b", "cpu", clear, tmp_path) == "bfloat16"


def test_a_damaged_cache_is_measured_again(tmp_path):
    (tmp_path / dtype_auto.CACHE_NAME).write_text("{not json")
    measure, calls = speeds(100.0, 700.0)
    assert dtype_auto.decide("a", "cpu", measure, tmp_path) == "float32" and len(calls) == 1


def test_auto_dtype_on_cpu_follows_the_probe(bf16_cpu, monkeypatch):
    # the AVX512-BF16 host without AMX of the issue: bf16 slower, so auto is fp32 despite the flags
    measure, calls = speeds(515.0, 700.0)
    monkeypatch.setattr(backbones, "measure_backbone", measure)
    assert backbones.auto_dtype("cpu", "smollm2-135m")[0] == "float32"
    assert backbones.resolve_dtype(None, "cpu", "smollm2-135m") == torch.float32
    assert calls == [("smollm2-135m", "cpu")] and bf16_cpu.is_file()
    # an explicit dtype never probes
    assert backbones.resolve_dtype("bfloat16", "cpu", "other") == torch.bfloat16 and len(calls) == 1
    faster, _ = speeds(1400.0, 700.0)
    monkeypatch.setattr(backbones, "measure_backbone", faster)
    assert backbones.auto_dtype("cpu", "amx-host-model")[0] == "bfloat16"


def test_no_probe_without_bf16_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("SIREN_CPU_FLAGS", "avx2 fma")
    monkeypatch.setenv("SIREN_CACHE", str(tmp_path))
    monkeypatch.setattr(backbones, "measure_backbone", lambda *a: pytest.fail("probed"))
    assert backbones.auto_dtype("cpu", "smollm2-135m")[0] == "float32"
    assert not (tmp_path / dtype_auto.CACHE_NAME).exists()


def test_load_backbone_auto_uses_the_measured_dtype(bf16_cpu, monkeypatch, tiny_llama_dir):
    faster, calls = speeds(2000.0, 700.0)
    monkeypatch.setattr(backbones, "measure_backbone", faster)
    bb = backbones.load_backbone(str(tiny_llama_dir), device="cpu")
    assert next(bb.model.parameters()).dtype == torch.bfloat16 and len(calls) == 1


def test_measure_backbone_times_both_dtypes(tiny_llama_dir):
    got = backbones.measure_backbone(str(tiny_llama_dir), "cpu")
    assert got["unit"] == "tok/s" and got["bfloat16"] > 0 and got["float32"] > 0


def test_head_dtype_auto(bf16_cpu, monkeypatch):
    from siren.pipeline import head, train

    measure, calls = speeds(300.0, 900.0)
    monkeypatch.setattr(head, "measure_head", measure)
    assert train.head_bf16(SimpleNamespace(head_dtype=None)) is False
    assert train.head_bf16(SimpleNamespace(head_dtype="auto")) is False and len(calls) == 1   # cached
    assert train.head_bf16(SimpleNamespace(head_dtype="bfloat16")) is True
    monkeypatch.setenv("SIREN_CPU_FLAGS", "")
    assert train.head_bf16(SimpleNamespace(head_dtype=None)) is False
