#!/usr/bin/env bash
# Train a general SIREN guard: extract per-layer features, fit L1 probes, select safety neurons,
# tune the MLP head with Optuna, save train/probes/optuna/${MODEL}_general/best_model.pkl (+ guard).
#
# Every setting has its default in configs/defaults.yaml. Set a variable below (here or in the
# environment) to override it; an unset or empty variable passes no flag, so the YAML decides.
#   MODEL=qwen3-0.6b bash train/run_general_siren.sh
#   DATASETS="aegis beavertails" DATA_DIR=../shared/data/siren bash train/run_general_siren.sh
# Further flags are passed through: bash train/run_general_siren.sh --out_dir runs/x
set -euo pipefail
set -f  # list variables (C_VALUES="200 500 1000") are split into words, never expanded as globs

MODEL="${MODEL:-}"                    # registry name (configs/backbones.yaml), local folder or Hub id
DATASETS="${DATASETS:-}"              # training datasets; unset: the paper's list (with a data dir: those it has)
DATA_DIR="${DATA_DIR:-}"              # SIREN-ready JSONL folder; unset: $SIREN_DATA_DIR, else the Hub
MAX_PER_SPLIT="${MAX_PER_SPLIT:-}"    # cap rows per split and dataset: "300", or "600 200 300" (train validation test)
SEED="${SEED:-}"
VAL_RATIO="${VAL_RATIO:-}"            # validation carved from train where the source has none
POOLING_TYPES="${POOLING_TYPES:-}"    # residual_mean and/or mlp_mean
DEVICE="${DEVICE:-}"                  # cpu | cuda | cuda:1
DTYPE="${DTYPE:-}"                    # backbone dtype: float32 | bfloat16 | float16; unset: bf16 where the device runs it natively, else fp32
TRUST_REMOTE_CODE="${TRUST_REMOTE_CODE:-}"  # 1 | 0: run the backbone's own model code (only for backbones you trust)
MAX_LENGTH="${MAX_LENGTH:-}"          # tokens per text (right truncation)
CACHE_DTYPE="${CACHE_DTYPE:-}"        # float16 | float32: dtype of the on-disk feature cache
CACHE_DIR="${CACHE_DIR:-}"            # feature cache; unset: $SIREN_CACHE/features
BATCH_SIZE="${BATCH_SIZE:-}"          # extraction: texts per forward at most (the authors' BATCH_SIZE)
BATCH_TOKENS="${BATCH_TOKENS:-}"      # extraction: padded tokens per length-bucketed batch
C_VALUES="${C_VALUES:-}"              # probe penalty ||w||_1 / C, e.g. "200 500 1000"
PROBE_TOL="${PROBE_TOL:-}"            # probe stopping tolerance; 1e-6 reaches the optimum (about 5x the probe time)
PROBE_C_RULE="${PROBE_C_RULE:-}"      # each layer's C: best (best validation F1) | one_se (sparsest C within one standard error)
PROBE_REFIT="${PROBE_REFIT:-}"        # 1 | 0: fit each layer's chosen probe again on train+validation before selecting
SELECTION_THRESHOLDS="${SELECTION_THRESHOLDS:-}"  # neuron selection: share of a layer's total |w|, e.g. "0.9"
LAYER_WEIGHT_FLOOR="${LAYER_WEIGHT_FLOOR:-}"  # layer weight: min-max normalised validation F1, floored
N_TRIALS="${N_TRIALS:-}"              # Optuna trials
N_FOLDS="${N_FOLDS:-}"                # k-fold CV on train+validation
N_JOBS="${N_JOBS:-}"                  # parallel trials in this process
MAX_EPOCHS="${MAX_EPOCHS:-}"          # head training epochs at most
PATIENCE="${PATIENCE:-}"              # epochs without CV improvement before a fold stops
HEAD_BATCH_SIZE="${HEAD_BATCH_SIZE:-}"  # the MLP head's mini-batch
PRUNER="${PRUNER:-}"                  # head search pruner: median | halving | none
HEAD_WIDTH_CAP="${HEAD_WIDTH_CAP:-}"  # largest first hidden width the head search tries
HEAD_DTYPE="${HEAD_DTYPE:-}"          # head training: float32 | bfloat16 | auto (bf16 where native)
FINAL_HEAD="${FINAL_HEAD:-}"          # refit | ensemble (mean of the best configuration's CV fold heads)
SCALE_BY_LAYER_WEIGHT="${SCALE_BY_LAYER_WEIGHT:-}"  # 1 | 0: multiply standardised head inputs by their layer weight
THRESHOLD_FROM_CV="${THRESHOLD_FROM_CV:-}"  # 1 | 0: choose the decision threshold on the head search's out-of-fold scores
DECISION_THRESHOLD="${DECISION_THRESHOLD:-}"  # score >= this is harmful
CATEGORY_HEAD="${CATEGORY_HEAD:-}"    # harm-category head: auto (when the rows carry categories) | off
ANSWER_HEAD="${ANSWER_HEAD:-}"        # the answer verdict's head: logistic | shared (the main head) | none
ANSWER_CUTS="${ANSWER_CUTS:-}"        # answer prefixes (tokens) it also trains on, e.g. "8 16 32 64"
ANSWER_RAMP_TOKENS="${ANSWER_RAMP_TOKENS:-}"  # a harmful prefix of t tokens weighs min(1, t / this)
ANSWER_HARMFUL_MIN_TOKENS="${ANSWER_HARMFUL_MIN_TOKENS:-}"  # harmful prefixes shorter than this are left out
ANSWER_C="${ANSWER_C:-}"              # inverse L2 strength of the logistic answer head
ANSWER_PROMPT_ROWS="${ANSWER_PROMPT_ROWS:-}"  # 1 | 0: prompt-level rows train the answer head too
ANSWER_MAIN_WEIGHT="${ANSWER_MAIN_WEIGHT:-}"  # answer verdict = (1 - w) answer head + w main head on the answer
DEBOUNCE="${DEBOUNCE:-}"              # stream rule stored with the guard: consecutive unsafe scores before a stop
MIN_ANSWER_TOKENS="${MIN_ANSWER_TOKENS:-}"  # ... no stop before this many answer tokens
EMA="${EMA:-}"                        # ... EMA alpha over the scores (unset: the YAML's)
TARGET_FALSE_ALARM="${TARGET_FALSE_ALARM:-}"  # the answer threshold flags at most this share of safe validation streams
STORAGE="${STORAGE:-}"                # Optuna storage shared by workers (sqlite:///x.db, x.journal, RDB URL)
STUDY_NAME="${STUDY_NAME:-}"
OUT_DIR="${OUT_DIR:-}"                # unset: train/probes/optuna/${MODEL}_general

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Relative paths are meant from where the user stands, not from the repo root we cd into.
if [ -n "$DATA_DIR" ] && [ -d "$DATA_DIR" ]; then DATA_DIR="$(cd "$DATA_DIR" && pwd)"; fi
if [ -n "${SIREN_DATA_DIR:-}" ] && [ -d "$SIREN_DATA_DIR" ]; then export SIREN_DATA_DIR="$(cd "$SIREN_DATA_DIR" && pwd)"; fi
if [ -n "$MODEL" ] && [ -d "$MODEL" ]; then MODEL="$(cd "$MODEL" && pwd)"; fi
if [ -n "$CACHE_DIR" ]; then CACHE_DIR="$(realpath -m "$CACHE_DIR")"; fi
if [ -n "$OUT_DIR" ]; then OUT_DIR="$(realpath -m "$OUT_DIR")"; fi
PY="${SIREN_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

source "$ROOT/scripts/driver_args.sh"   # ARGS, and flag / flags / switch to fill it
flag --model "$MODEL"
flags --datasets "$DATASETS"
flag --data_dir "$DATA_DIR"
flags --max_per_split "$MAX_PER_SPLIT"
flag --seed "$SEED"
flag --val_ratio "$VAL_RATIO"
flags --pooling_types "$POOLING_TYPES"
flag --device "$DEVICE"
flag --dtype "$DTYPE"
flag --max_length "$MAX_LENGTH"
flag --cache_dtype "$CACHE_DTYPE"
flag --cache_dir "$CACHE_DIR"
flag --batch_size "$BATCH_SIZE"
flag --batch_tokens "$BATCH_TOKENS"
flags --c_values "$C_VALUES"
flag --probe_tol "$PROBE_TOL"
flag --probe_c_rule "$PROBE_C_RULE"
flags --selection_thresholds "$SELECTION_THRESHOLDS"
flag --layer_weight_floor "$LAYER_WEIGHT_FLOOR"
flag --n_trials "$N_TRIALS"
flag --n_folds "$N_FOLDS"
flag --n_jobs "$N_JOBS"
flag --max_epochs "$MAX_EPOCHS"
flag --patience "$PATIENCE"
flag --head_batch_size "$HEAD_BATCH_SIZE"
flag --pruner "$PRUNER"
flag --head_width_cap "$HEAD_WIDTH_CAP"
flag --head_dtype "$HEAD_DTYPE"
flag --final_head "$FINAL_HEAD"
switch scale_by_layer_weight "$SCALE_BY_LAYER_WEIGHT" SCALE_BY_LAYER_WEIGHT
switch threshold_from_cv "$THRESHOLD_FROM_CV" THRESHOLD_FROM_CV
switch probe_refit "$PROBE_REFIT" PROBE_REFIT
switch trust_remote_code "$TRUST_REMOTE_CODE" TRUST_REMOTE_CODE
flag --decision_threshold "$DECISION_THRESHOLD"
flag --category_head "$CATEGORY_HEAD"
flag --answer_head "$ANSWER_HEAD"
flags --answer_cuts "$ANSWER_CUTS"
flag --answer_ramp_tokens "$ANSWER_RAMP_TOKENS"
flag --answer_harmful_min_tokens "$ANSWER_HARMFUL_MIN_TOKENS"
flag --answer_c "$ANSWER_C"
switch answer_prompt_rows "$ANSWER_PROMPT_ROWS" ANSWER_PROMPT_ROWS
flag --answer_main_weight "$ANSWER_MAIN_WEIGHT"
flag --debounce "$DEBOUNCE"
flag --min_answer_tokens "$MIN_ANSWER_TOKENS"
flag --ema "$EMA"
flag --target_false_alarm "$TARGET_FALSE_ALARM"
flag --storage "$STORAGE"
flag --study_name "$STUDY_NAME"
flag --out_dir "$OUT_DIR"
cd "$ROOT"
exec "$PY" -m siren train "${ARGS[@]}" "$@"
