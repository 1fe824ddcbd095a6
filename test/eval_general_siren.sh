#!/usr/bin/env bash
# Evaluate the guard trained by train/run_general_siren.sh: per-dataset macro-F1, harmful-F1,
# accuracy, precision, recall, ROC-AUC, PR-AUC -> train/probes/optuna/${MODEL}_general/eval_results.json
# (+ roc.png, f1.png). Variables can be overridden from the environment, e.g.
#   MODEL=qwen3-0.6b EXTRA_DATASETS="xstest advbench" bash test/eval_general_siren.sh
set -euo pipefail

MODEL="${MODEL:-smollm2-135m}"        # the backbone the guard was trained on (or a guard folder)
DEVICE="${DEVICE:-auto}"              # auto | cpu | cuda
BATCH_TOKENS="${BATCH_TOKENS:-}"      # extraction batches by padded tokens, not texts (the paper's BATCH_SIZE); empty: 2048 CPU, 16384 GPU
DATASETS="${DATASETS:-}"              # default: the datasets the guard was trained on
EXTRA_DATASETS="${EXTRA_DATASETS:-}"  # harmful-only sets report recall, e.g. "advbench harmbench simple_safety_tests"
DATA_DIR="${DATA_DIR:-${SIREN_DATA_DIR:-}}"  # default: the training run's
CALIBRATE="${CALIBRATE:-0}"           # 1: choose the threshold maximising validation F1 and store it in the guard

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -n "$DATA_DIR" ] && [ -d "$DATA_DIR" ] && DATA_DIR="$(cd "$DATA_DIR" && pwd)"
[ -d "$MODEL" ] && MODEL="$(cd "$MODEL" && pwd)"
PY="${SIREN_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

ARGS=(--model "$MODEL" --device "$DEVICE")
[ -n "$BATCH_TOKENS" ] && ARGS+=(--batch_tokens "$BATCH_TOKENS")
[ -n "$DATASETS" ] && ARGS+=(--datasets $DATASETS)
[ -n "$EXTRA_DATASETS" ] && ARGS+=(--extra_datasets $EXTRA_DATASETS)
[ -n "$DATA_DIR" ] && ARGS+=(--data_dir "$DATA_DIR")
[ "$CALIBRATE" = "1" ] && ARGS+=(--calibrate)
cd "$ROOT"
exec "$PY" -m siren eval "${ARGS[@]}" "$@"
