#!/usr/bin/env bash
# Train a general SIREN guard: extract per-layer features, fit L1 probes, select safety neurons,
# tune the MLP head with Optuna, save train/probes/optuna/${MODEL}_general/best_model.pkl (+ guard).
# Every variable below can be overridden from the environment, e.g.
#   MODEL=qwen3-0.6b bash train/run_general_siren.sh
#   DATASETS="aegis beavertails" DATA_DIR=../shared/data/siren bash train/run_general_siren.sh
set -euo pipefail

MODEL="${MODEL:-smollm2-135m}"          # registry name (configs/backbones.yaml), local folder or Hub id
DEVICE="${DEVICE:-auto}"                # auto | cpu | cuda | cuda:1
BATCH_SIZE="${BATCH_SIZE:-256}"         # MLP head mini-batch
BATCH_TOKENS="${BATCH_TOKENS:-}"        # extraction: padded tokens per length-bucketed batch (empty: 2048 CPU, 16384 GPU)
C_VALUES="${C_VALUES:-200 500 1000}"    # probe penalty ||w||_1 / C
THRESHOLDS="${THRESHOLDS:-0.9}"         # neuron selection: share of a layer's total |w|
N_TRIALS="${N_TRIALS:-32}"              # Optuna trials
N_JOBS="${N_JOBS:-1}"                   # parallel trials in this process
N_FOLDS="${N_FOLDS:-5}"                 # k-fold CV on train+validation
VAL_RATIO="${VAL_RATIO:-0.2}"           # validation carved from train where the source has none
REP_TYPES="${REP_TYPES:-residual_mean}" # residual_mean and/or mlp_mean
DATA_DIR="${DATA_DIR:-${SIREN_DATA_DIR:-}}"  # SIREN-ready JSONL folder; empty = load from the Hub
MAX_PER_SPLIT="${MAX_PER_SPLIT:-}"      # cap rows per split and dataset: "300", or "600 200 300" (train validation test); empty = all
DTYPE="${DTYPE:-auto}"                  # backbone dtype: auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16
SEED="${SEED:-42}"
STORAGE="${STORAGE:-}"                  # Optuna storage shared by workers (sqlite:///x.db, x.journal, RDB URL)
STUDY_NAME="${STUDY_NAME:-}"
DATASETS_DEFAULT=(toxic_chat openai_moderation aegis aegis2 wildguard safe_rlhf beavertails)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Relative paths are meant from where the user stands, not from the repo root we cd into.
[ -n "$DATA_DIR" ] && [ -d "$DATA_DIR" ] && DATA_DIR="$(cd "$DATA_DIR" && pwd)"
if [ -n "${DATASETS:-}" ]; then
  read -r -a DATASETS_ARR <<< "$DATASETS"   # given explicitly: every one must be available
elif [ -n "$DATA_DIR" ] && [ -d "$DATA_DIR" ]; then
  # The paper's list, less those without an offline copy (named, so nothing is dropped silently).
  DATASETS_ARR=()
  for d in "${DATASETS_DEFAULT[@]}"; do
    if [ -d "$DATA_DIR/$d" ]; then DATASETS_ARR+=("$d"); else echo "[siren] $d: not in $DATA_DIR, left out (set DATASETS to require it)" >&2; fi
  done
else
  DATASETS_ARR=("${DATASETS_DEFAULT[@]}")
fi
PY="${SIREN_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

ARGS=(--model "$MODEL" --datasets "${DATASETS_ARR[@]}" --device "$DEVICE" --dtype "$DTYPE"
      --batch_size "$BATCH_SIZE" --c_values $C_VALUES --thresholds $THRESHOLDS
      --n_trials "$N_TRIALS" --n_jobs "$N_JOBS" --n_folds "$N_FOLDS" --val_ratio "$VAL_RATIO"
      --rep_types $REP_TYPES --seed "$SEED")
[ -n "$DATA_DIR" ] && ARGS+=(--data_dir "$DATA_DIR")
[ -n "$MAX_PER_SPLIT" ] && ARGS+=(--max_per_split $MAX_PER_SPLIT)
[ -n "$BATCH_TOKENS" ] && ARGS+=(--batch_tokens "$BATCH_TOKENS")
[ -n "$STORAGE" ] && ARGS+=(--storage "$STORAGE")
[ -n "$STUDY_NAME" ] && ARGS+=(--study_name "$STUDY_NAME")
cd "$ROOT"
exec "$PY" -m siren train "${ARGS[@]}" "$@"
