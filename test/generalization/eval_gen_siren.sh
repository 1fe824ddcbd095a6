#!/usr/bin/env bash
# Reasoning-trace evaluation of a trained guard on Qwen3GuardTest's `thinking` split, per
# source-model group (GLM, Qwen3, Deepseek): macro-F1, accuracy, precision, recall
# -> <guard folder>/think_eval_results.json. Variables can be overridden from the environment; an
# unset or empty variable passes no flag, so configs/defaults.yaml (section eval_think) decides. E.g.
#   MODEL=qwen3-4b bash test/generalization/eval_gen_siren.sh
#   MODEL=path/to/guard DATA_FILE=~/data/Qwen3GuardTest/thinking.jsonl bash test/generalization/eval_gen_siren.sh
set -euo pipefail
set -f  # list variables (C_VALUES="200 500 1000") are split into words, never expanded as globs

MODEL="${MODEL:-}"                    # a guard folder, or the backbone whose trained guard to read
SPLIT="${SPLIT:-}"                    # Qwen3GuardTest split
DATA_FILE="${DATA_FILE:-}"            # local copy of thinking.jsonl (the Hub's columns); empty: the Hub
WITH_PROMPT="${WITH_PROMPT:-}"        # 1: score prompt + response; 0: the response alone (the authors)
DECISION_THRESHOLD="${DECISION_THRESHOLD:-}"  # score >= this is harmful; empty: the guard's
LIMIT="${LIMIT:-}"                    # a seeded sample of this many rows; empty: all
SEED="${SEED:-}"
OUT="${OUT:-}"                        # empty: <guard folder>/think_eval_results.json
DEVICE="${DEVICE:-}"                  # auto | cpu | cuda
DTYPE="${DTYPE:-}"                    # backbone dtype; empty: the one the guard was trained with
BATCH_SIZE="${BATCH_SIZE:-}"          # texts per forward at most
BATCH_TOKENS="${BATCH_TOKENS:-}"      # padded tokens per forward; empty: 2048 on CPU, 16384 on GPU

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -n "$MODEL" ] && [ -d "$MODEL" ]; then MODEL="$(cd "$MODEL" && pwd)"; fi
for v in DATA_FILE OUT; do [ -n "${!v}" ] && printf -v "$v" '%s' "$(realpath -m "${!v}")"; done
PY="${SIREN_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

source "$ROOT/scripts/driver_args.sh"   # ARGS, and flag / flags / switch to fill it
flag --model "$MODEL"
flag --split "$SPLIT"
flag --data_file "$DATA_FILE"
switch with_prompt "$WITH_PROMPT" WITH_PROMPT
flag --decision_threshold "$DECISION_THRESHOLD"
flag --limit "$LIMIT"
flag --seed "$SEED"
flag --out "$OUT"
flag --device "$DEVICE"
flag --dtype "$DTYPE"
flag --batch_size "$BATCH_SIZE"
flag --batch_tokens "$BATCH_TOKENS"
cd "$ROOT"
exec "$PY" -m siren eval-think "${ARGS[@]}" "$@"
