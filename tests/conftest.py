"""Shared fixtures: tiny random backbones saved to folders, and the offline data dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import save_tiny  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# dtype "auto" must not depend on the host: no native bf16 (so fp32 on CPU) in every test and
# every subprocess a test starts (tests that need a capability mock siren.backbones._cpu_flags).
os.environ["SIREN_CPU_FLAGS"] = ""



@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-qwen3"), "qwen3")


@pytest.fixture(params=["llama", "qwen3"])
def tiny_dir(request, tiny_llama_dir, tiny_qwen3_dir) -> Path:
    return tiny_llama_dir if request.param == "llama" else tiny_qwen3_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline SIREN-ready rows (SIREN_DATA_DIR, else ../shared/data/siren); skip when absent."""
    candidates = [os.environ.get("SIREN_DATA_DIR"), REPO.parent / "shared" / "data" / "siren"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    pytest.skip("offline data not found: set SIREN_DATA_DIR")
