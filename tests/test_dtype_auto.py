"""backbones.auto_dtype: bf16 only where the device runs it natively (capabilities mocked)."""

import pytest
import torch

from siren import backbones


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "fma", "avx512f"}, "float32"),                     # AVX2/AVX-512 without bf16
    ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
    ({"avx2", "amx_tile", "amx_bf16"}, "bfloat16"),
    (set(), "float32"),                                          # flags unknown (not Linux)
])
def test_cpu_picks_by_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(backbones, "_cpu_flags", lambda: set(flags))
    name, reason = backbones.auto_dtype("cpu")
    assert name == expected
    assert ("no native bf16" in reason) == (expected == "float32")
    want = torch.bfloat16 if expected == "bfloat16" else torch.float32
    assert backbones.resolve_dtype("auto", "cpu") is want
    assert backbones.resolve_dtype(None, "cpu") is want
    assert backbones.resolve_dtype("float32", "cpu") is torch.float32      # explicit wins


@pytest.mark.parametrize("supported, expected", [(True, "bfloat16"), (False, "float32")])
def test_cuda_picks_by_bf16_support(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    monkeypatch.setattr(backbones, "_cpu_flags", lambda: {"amx_bf16"})   # the CPU does not matter
    assert backbones.auto_dtype("cuda:0")[0] == expected


def test_says_what_it_picked_once(monkeypatch, capsys):
    monkeypatch.setattr(backbones, "_cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(backbones, "_told", set())
    backbones.resolve_dtype("auto", "cpu")
    backbones.resolve_dtype("auto", "cpu")
    err = capsys.readouterr().err
    assert err.count("dtype auto -> bfloat16 on cpu") == 1
    assert "avx512_bf16" in err


def test_cpu_flags_parses_proc_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.delenv("SIREN_CPU_FLAGS", raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16\n\nprocessor\t: 1\n")
    real_open = open
    monkeypatch.setattr("builtins.open",
                        lambda p, *a, **k: real_open(info if p == "/proc/cpuinfo" else p, *a, **k))
    assert backbones._cpu_flags() == {"fpu", "sse", "avx2", "amx_bf16"}


def test_env_replaces_the_probe(monkeypatch):
    monkeypatch.setenv("SIREN_CPU_FLAGS", "avx2 amx_bf16")
    assert backbones.auto_dtype("cpu")[0] == "bfloat16"
    monkeypatch.setenv("SIREN_CPU_FLAGS", "")
    assert backbones.auto_dtype("cpu")[0] == "float32"
