#!/usr/bin/env bash
# Reasoning-trace evaluation of a trained guard on Qwen3GuardTest's `thinking` split, per
# source-model group (GLM, Qwen3, Deepseek): macro-F1, accuracy, precision, recall
# -> <guard folder>/think_eval_results.json. Variables can be overridden from the environment, e.g.
#   MODEL=qwen3-4b bash test/generalization/eval_gen_siren.sh
#   MODEL=path/to/guard DATA_FILE=~/data/Qwen3GuardTest/thinking.jsonl bash test/generalization/eval_gen_siren.sh
set -euo pipefail
set -f  # list variables (C_VALUES="200 500 1000") are split into words, never expanded as globs

MODEL="${MODEL:-smollm2-135m}"        # a guard folder, or the backbone whose trained guard to read
SPLIT="${SPLIT:-thinking}"            # Qwen3GuardTest split
DATA_FILE="${DATA_FILE:-}"            # local copy of thinking.jsonl (the Hub's columns); empty: the Hub
WITH_PROMPT="${WITH_PROMPT:-0}"       # 1: score prompt + response; 0: the response alone (the authors)
THRESHOLD="${THRESHOLD:-}"            # empty: the guard's
LIMIT="${LIMIT:-}"                    # a seeded sample of this many rows; empty: all
OUT="${OUT:-}"                        # empty: <guard folder>/think_eval_results.json
DEVICE="${DEVICE:-auto}"              # auto | cpu | cuda
BATCH_TOKENS="${BATCH_TOKENS:-16384}" # padded tokens per forward (2048 suits a CPU)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ -d "$MODEL" ] && MODEL="$(cd "$MODEL" && pwd)"
PY="${SIREN_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

ARGS=(--model "$MODEL" --split "$SPLIT" --device "$DEVICE" --batch_tokens "$BATCH_TOKENS")
[ -n "$DATA_FILE" ] && ARGS+=(--data_file "$(realpath "$DATA_FILE")")
[ "$WITH_PROMPT" = "1" ] && ARGS+=(--with_prompt)
[ -n "$THRESHOLD" ] && ARGS+=(--threshold "$THRESHOLD")
[ -n "$LIMIT" ] && ARGS+=(--limit "$LIMIT")
[ -n "$OUT" ] && ARGS+=(--out "$(realpath -m "$OUT")")
cd "$ROOT"
exec "$PY" -m siren eval-think "${ARGS[@]}" "$@"
