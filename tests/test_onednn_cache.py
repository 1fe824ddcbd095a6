"""siren caps oneDNN's primitive cache (see siren/__init__.py) unless the user set it."""

import os
import subprocess
import sys


def _value_after_import(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if env_value is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = env_value
    code = "import siren, os; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_import_sets_a_small_cache():
    assert _value_after_import(None) == "128"


def test_a_users_value_wins():
    assert _value_after_import("1024") == "1024"
