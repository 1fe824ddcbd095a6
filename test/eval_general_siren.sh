#!/usr/bin/env bash
# Evaluate the guard trained by train/run_general_siren.sh: per-dataset macro-F1, harmful-F1,
# accuracy, precision, recall, ROC-AUC, PR-AUC -> train/probes/optuna/${MODEL}_general/eval_results.json
# (+ roc.png, f1.png). Settings not set here come from the training run's results.json, else
# configs/defaults.yaml; an unset or empty variable passes no flag. E.g.
#   MODEL=qwen3-0.6b EXTRA_DATASETS="xstest advbench" bash test/eval_general_siren.sh
set -euo pipefail
set -f  # list variables (C_VALUES="200 500 1000") are split into words, never expanded as globs

MODEL="${MODEL:-}"                    # the backbone the guard was trained on, or a guard folder
GUARD="${GUARD:-}"                    # guard folder; default: the run folder of MODEL
DATASETS="${DATASETS:-}"              # default: the datasets the guard was trained on
EXTRA_DATASETS="${EXTRA_DATASETS:-}"  # harmful-only sets report recall, e.g. "advbench harmbench simple_safety_tests"
DATA_DIR="${DATA_DIR:-}"              # default: the training run's
MAX_PER_SPLIT="${MAX_PER_SPLIT:-}"    # default: the training run's
DEVICE="${DEVICE:-}"                  # cpu | cuda | cuda:1
DTYPE="${DTYPE:-}"                    # default: the training run's
BATCH_SIZE="${BATCH_SIZE:-}"          # extraction: texts per forward at most (the authors' BATCH_SIZE)
BATCH_TOKENS="${BATCH_TOKENS:-}"      # extraction: padded tokens per length-bucketed batch
CACHE_DIR="${CACHE_DIR:-}"            # feature cache; default: the training run's
TRUST_REMOTE_CODE="${TRUST_REMOTE_CODE:-}"  # 1 | 0; default: the training run's
CALIBRATE="${CALIBRATE:-}"            # 1: set the guard's decision threshold to the one maximising validation F1
ANSWERS="${ANSWERS:-}"                # 0: skip the answer verdict on the test rows with a response (a backbone forward)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "$DATA_DIR" ] && [ -d "$DATA_DIR" ]; then DATA_DIR="$(cd "$DATA_DIR" && pwd)"; fi
if [ -n "${SIREN_DATA_DIR:-}" ] && [ -d "$SIREN_DATA_DIR" ]; then export SIREN_DATA_DIR="$(cd "$SIREN_DATA_DIR" && pwd)"; fi
if [ -n "$MODEL" ] && [ -d "$MODEL" ]; then MODEL="$(cd "$MODEL" && pwd)"; fi
if [ -n "$GUARD" ]; then GUARD="$(realpath -m "$GUARD")"; fi
if [ -n "$CACHE_DIR" ]; then CACHE_DIR="$(realpath -m "$CACHE_DIR")"; fi
PY="${SIREN_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

source "$ROOT/scripts/driver_args.sh"   # ARGS, and flag / flags / switch to fill it
flag --model "$MODEL"
flag --guard "$GUARD"
flags --datasets "$DATASETS"
flags --extra_datasets "$EXTRA_DATASETS"
flag --data_dir "$DATA_DIR"
flags --max_per_split "$MAX_PER_SPLIT"
flag --device "$DEVICE"
flag --dtype "$DTYPE"
flag --batch_size "$BATCH_SIZE"
flag --batch_tokens "$BATCH_TOKENS"
flag --cache_dir "$CACHE_DIR"
switch trust_remote_code "$TRUST_REMOTE_CODE" TRUST_REMOTE_CODE
switch calibrate "$CALIBRATE" CALIBRATE
switch answers "$ANSWERS" ANSWERS
cd "$ROOT"
exec "$PY" -m siren eval "${ARGS[@]}" "$@"
