#!/usr/bin/env bash
# The README's test command: set-up if needed, then the whole pytest suite.
# SIREN_DATA_DIR (optional) points at offline SIREN-ready rows; tests that need them skip without.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
