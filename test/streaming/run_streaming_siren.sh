#!/usr/bin/env bash
# Streaming evaluation of a trained guard: how early a harmful response is caught while it is
# generated (timely recall at the end of the first unsafe sentence, cumulative recall at
# +32/+64/+128/+256 tokens, false-alarm rate on safe streams, detection-delay distribution)
# -> ${OUT_DIR}/streaming_results.json + detection_delay.png. Variables can be overridden from
# the environment, e.g.
#   MODEL=qwen3-4b DATA_FILE=~/data/Qwen3GuardTest/thinking_loc.jsonl bash test/streaming/run_streaming_siren.sh
#   SOURCE=jsonl DATA_FILE=../shared/data/siren/beavertails/test.jsonl IDS_FROM=path/to/guard/splits.json \
#     IDS_DATASET=beavertails WITH_PROMPT=1 MODEL=path/to/guard bash test/streaming/run_streaming_siren.sh
set -euo pipefail
set -f  # list variables (C_VALUES="200 500 1000") are split into words, never expanded as globs

MODEL="${MODEL:-smollm2-135m}"        # a guard folder, or the backbone whose trained guard to read
SOURCE="${SOURCE:-qwen3guardtest}"    # qwen3guardtest | jsonl (SIREN-ready rows: prompt, response, label)
SPLIT="${SPLIT:-thinking_loc}"        # Qwen3GuardTest split: thinking_loc | response_loc
DATA_FILE="${DATA_FILE:-}"            # local copy of the split's JSONL (Hub columns), or the SIREN-ready rows; empty: the Hub
REFERENCE_TOKENIZER="${REFERENCE_TOKENIZER:-}"  # tokenizer of Qwen3GuardTest's input_ids; empty: Qwen/Qwen3-0.6B
IDS_FROM="${IDS_FROM:-}"              # splits.json: keep only the ids it lists for IDS_DATASET / IDS_SPLIT
IDS_DATASET="${IDS_DATASET:-}"
IDS_SPLIT="${IDS_SPLIT:-test}"
LIMIT="${LIMIT:-}"                    # a seeded sample of this many streams; empty: all
SEED="${SEED:-}"                      # empty: configs/defaults.yaml's
EVERY="${EVERY:-1}"                   # score after every k response tokens; 0: only the authors' checkpoints
MAX_TOKENS="${MAX_TOKENS:-}"          # read at most this many response tokens per stream; empty: all
THRESHOLD="${THRESHOLD:-}"            # empty: the guard's
DEBOUNCE="${DEBOUNCE:-}"              # flag after this many consecutive scores >= threshold; empty: the guard's rule / defaults
MIN_ANSWER_TOKENS="${MIN_ANSWER_TOKENS:-}"  # never flag before this many answer tokens; empty: as DEBOUNCE
EMA="${EMA:-}"                        # EMA alpha in (0, 1] over the scores; empty: as DEBOUNCE
VERDICT="${VERDICT:-auto}"            # auto | response (the answer head) | text (the whole text)
TARGET_FALSE_ALARM="${TARGET_FALSE_ALARM:-}"  # pick the threshold for this false-alarm rate on validation streams
VAL_IDS_SPLIT="${VAL_IDS_SPLIT:-}"    # split inside IDS_FROM holding the validation streams (e.g. validation)
VAL_DATA_FILE="${VAL_DATA_FILE:-}"    # or a SIREN-ready JSONL of validation streams
WITH_PROMPT="${WITH_PROMPT:-0}"       # 1: score prompt + response so far; 0: the response alone (the authors)
SAVE_TRACES="${SAVE_TRACES:-0}"       # 1: also write every score to traces.jsonl
OUT_DIR="${OUT_DIR:-}"                # empty: <guard folder>/streaming_<split or data file name>
DEVICE="${DEVICE:-auto}"              # auto | cpu | cuda

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ -d "$MODEL" ] && MODEL="$(cd "$MODEL" && pwd)"
PY="${SIREN_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

ARGS=(--model "$MODEL" --source "$SOURCE" --split "$SPLIT" --every "$EVERY" --verdict "$VERDICT" --device "$DEVICE")
[ -n "$DEBOUNCE" ] && ARGS+=(--debounce "$DEBOUNCE")
[ -n "$MIN_ANSWER_TOKENS" ] && ARGS+=(--min_answer_tokens "$MIN_ANSWER_TOKENS")
[ -n "$EMA" ] && ARGS+=(--ema "$EMA")
[ -n "$TARGET_FALSE_ALARM" ] && ARGS+=(--target_false_alarm "$TARGET_FALSE_ALARM")
[ -n "$VAL_IDS_SPLIT" ] && ARGS+=(--val_ids_split "$VAL_IDS_SPLIT")
[ -n "$VAL_DATA_FILE" ] && ARGS+=(--val_data_file "$(realpath "$VAL_DATA_FILE")")
[ -n "$DATA_FILE" ] && ARGS+=(--data_file "$(realpath "$DATA_FILE")")
[ -n "$REFERENCE_TOKENIZER" ] && ARGS+=(--reference_tokenizer "$REFERENCE_TOKENIZER")
[ -n "$IDS_FROM" ] && ARGS+=(--ids_from "$(realpath "$IDS_FROM")" --ids_dataset "$IDS_DATASET" --ids_split "$IDS_SPLIT")
[ -n "$LIMIT" ] && ARGS+=(--limit "$LIMIT")
[ -n "$SEED" ] && ARGS+=(--seed "$SEED")
[ -n "$MAX_TOKENS" ] && ARGS+=(--max_tokens "$MAX_TOKENS")
[ -n "$THRESHOLD" ] && ARGS+=(--threshold "$THRESHOLD")
[ "$WITH_PROMPT" = "1" ] && ARGS+=(--with_prompt)
[ "$SAVE_TRACES" = "1" ] && ARGS+=(--save_traces)
[ -n "$OUT_DIR" ] && ARGS+=(--out_dir "$(realpath -m "$OUT_DIR")")
cd "$ROOT"
exec "$PY" -m siren eval-stream "${ARGS[@]}" "$@"
