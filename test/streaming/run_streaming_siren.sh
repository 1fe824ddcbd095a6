#!/usr/bin/env bash
# Streaming evaluation of a trained guard: how early a harmful response is caught while it is
# generated (timely recall at the end of the first unsafe sentence, cumulative recall at
# +32/+64/+128/+256 tokens, false-alarm rate on safe streams, detection-delay distribution)
# -> ${OUT_DIR}/streaming_results.json + detection_delay.png. Variables can be overridden from
# the environment; an unset or empty variable passes no flag, so configs/defaults.yaml
# (section eval_stream) decides. E.g.
#   MODEL=qwen3-4b DATA_FILE=~/data/Qwen3GuardTest/thinking_loc.jsonl bash test/streaming/run_streaming_siren.sh
#   SOURCE=jsonl DATA_FILE=../shared/data/siren/beavertails/test.jsonl IDS_FROM=path/to/guard/splits.json \
#     IDS_DATASET=beavertails WITH_PROMPT=1 MODEL=path/to/guard bash test/streaming/run_streaming_siren.sh
set -euo pipefail
set -f  # list variables (C_VALUES="200 500 1000") are split into words, never expanded as globs

MODEL="${MODEL:-}"                    # a guard folder, or the backbone whose trained guard to read
SOURCE="${SOURCE:-}"                  # qwen3guardtest | jsonl (SIREN-ready rows: prompt, response, label)
SPLIT="${SPLIT:-}"                    # Qwen3GuardTest split: thinking_loc | response_loc
DATA_FILE="${DATA_FILE:-}"            # local copy of the split's JSONL (Hub columns), or the SIREN-ready rows; empty: the Hub
REFERENCE_TOKENIZER="${REFERENCE_TOKENIZER:-}"  # tokenizer of Qwen3GuardTest's input_ids; empty: Qwen/Qwen3-0.6B
IDS_FROM="${IDS_FROM:-}"              # splits.json: keep only the ids it lists for IDS_DATASET / IDS_SPLIT
IDS_DATASET="${IDS_DATASET:-}"
IDS_SPLIT="${IDS_SPLIT:-}"            # train | validation | test
LIMIT="${LIMIT:-}"                    # a seeded sample of this many streams; empty: all
SEED="${SEED:-}"
EVERY="${EVERY:-}"                    # score after every k response tokens; 0: only the authors' checkpoints
MAX_TOKENS="${MAX_TOKENS:-}"          # read at most this many response tokens per stream; empty: all
GRACES="${GRACES:-}"                  # tokens after the unsafe sentence at which recall is counted, e.g. "32 64 128 256"
VERDICT="${VERDICT:-}"                # auto | response (the answer head) | text (the whole text); empty: auto
DECISION_THRESHOLD="${DECISION_THRESHOLD:-}"  # score >= this is harmful; empty: the guard's (for the verdict used)
DEBOUNCE="${DEBOUNCE:-}"              # flag after this many consecutive scores >= the decision threshold; empty: the guard's rule, else 1
MIN_ANSWER_TOKENS="${MIN_ANSWER_TOKENS:-}"  # never flag before this many answer tokens; empty: the guard's rule, else 0
EMA="${EMA:-}"                        # EMA alpha in (0, 1] over the scores; empty: the guard's rule, else raw scores
TARGET_FALSE_ALARM="${TARGET_FALSE_ALARM:-}"  # pick the decision threshold for this false-alarm rate on validation streams
VAL_DATA_FILE="${VAL_DATA_FILE:-}"    # SIREN-ready JSONL of validation streams; empty: DATA_FILE
VAL_IDS_SPLIT="${VAL_IDS_SPLIT:-}"    # split inside IDS_FROM holding the validation streams (e.g. validation)
VAL_LIMIT="${VAL_LIMIT:-}"            # a seeded sample of this many safe validation streams; empty: all
WITH_PROMPT="${WITH_PROMPT:-}"        # 1: score prompt + response so far; 0: the response alone (the authors)
STATELESS="${STATELESS:-}"            # 1: never use the runtime's streaming session
SAVE_TRACES="${SAVE_TRACES:-}"        # 1: also write every score to traces.jsonl
OUT_DIR="${OUT_DIR:-}"                # empty: <guard folder>/streaming_<split or data file name>
DEVICE="${DEVICE:-}"                  # auto | cpu | cuda
DTYPE="${DTYPE:-}"                    # backbone dtype; empty: the one the guard was trained with
BATCH_SIZE="${BATCH_SIZE:-}"          # texts per forward at most (stateless path)
BATCH_TOKENS="${BATCH_TOKENS:-}"      # padded tokens per forward (stateless path); empty: 2048 on CPU, 16384 on GPU

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -n "$MODEL" ] && [ -d "$MODEL" ]; then MODEL="$(cd "$MODEL" && pwd)"; fi
for v in DATA_FILE VAL_DATA_FILE IDS_FROM OUT_DIR; do [ -n "${!v}" ] && printf -v "$v" '%s' "$(realpath -m "${!v}")"; done
PY="${SIREN_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

source "$ROOT/scripts/driver_args.sh"   # ARGS, and flag / flags / switch to fill it
flag --model "$MODEL"
flag --source "$SOURCE"
flag --split "$SPLIT"
flag --data_file "$DATA_FILE"
flag --reference_tokenizer "$REFERENCE_TOKENIZER"
flag --ids_from "$IDS_FROM"
flag --ids_dataset "$IDS_DATASET"
flag --ids_split "$IDS_SPLIT"
flag --limit "$LIMIT"
flag --seed "$SEED"
flag --every "$EVERY"
flag --max_tokens "$MAX_TOKENS"
flags --graces "$GRACES"
flag --verdict "$VERDICT"
flag --decision_threshold "$DECISION_THRESHOLD"
flag --debounce "$DEBOUNCE"
flag --min_answer_tokens "$MIN_ANSWER_TOKENS"
flag --ema "$EMA"
flag --target_false_alarm "$TARGET_FALSE_ALARM"
flag --val_data_file "$VAL_DATA_FILE"
flag --val_ids_split "$VAL_IDS_SPLIT"
flag --val_limit "$VAL_LIMIT"
switch with_prompt "$WITH_PROMPT" WITH_PROMPT
switch stateless "$STATELESS" STATELESS
switch save_traces "$SAVE_TRACES" SAVE_TRACES
flag --out_dir "$OUT_DIR"
flag --device "$DEVICE"
flag --dtype "$DTYPE"
flag --batch_size "$BATCH_SIZE"
flag --batch_tokens "$BATCH_TOKENS"
cd "$ROOT"
exec "$PY" -m siren eval-stream "${ARGS[@]}" "$@"
