#!/usr/bin/env bash
# The comparison report of a trained run: SIREN against text baselines, single-layer probes,
# ablations and (given their weights) the guard models, all on the run's split ids.
# -> reports/<run folder name>/RESULTS.md (+ results.json, roc.png, layers.png)
# Variables can be overridden from the environment, e.g.
#   RUN=path/to/run bash scripts/report.sh
#   MODEL=qwen3-0.6b bash scripts/report.sh        # with Hub access: adds the paper's Guard row (Qwen3Guard-Gen-0.6B)
set -euo pipefail

MODEL="${MODEL:-smollm2-135m}"               # used here only to find RUN and the paper's guard (not a flag of siren report)
RUN="${RUN:-}"                               # the trained run folder (default: train/probes/optuna/${MODEL}_general)
OUT="${OUT:-}"                               # default: reports/<run folder name>
SYSTEMS="${SYSTEMS:-}"                       # default: all (tfidf_lr profanity_check last_layer best_layer all_neurons_mlp uniform_weights siren)
GUARDS="${GUARDS-default}"                   # guard models: registry names or NAME=FOLDER; "default": the paper's guard for MODEL, if any; "": none
EXTRA_DATASETS="${EXTRA_DATASETS-default}"   # harmful-only test sets; "default": those in the data dir (or all, with the Hub)
N_TRIALS="${N_TRIALS:-}"                     # head search of the MLP systems (default: the run's)
N_FOLDS="${N_FOLDS:-}"
ALL_NEURONS_LIMIT="${ALL_NEURONS_LIMIT:-}"   # all_neurons_mlp: all L*d features up to this many, else a random subset of SIREN's size
LATENCY_TEXTS="${LATENCY_TEXTS:-}"           # test texts timed (batches of 32; the first 8 at batch 1)
DEVICE="${DEVICE:-}"                         # default: the run's
CACHE_DIR="${CACHE_DIR:-}"                   # feature cache; default: the run's
BATCH_TOKENS="${BATCH_TOKENS:-}"             # padded tokens per forward when features are extracted
GUARD_DEVICE="${GUARD_DEVICE:-}"             # device of the guard models; default: cuda if available
GUARD_BATCH_SIZE="${GUARD_BATCH_SIZE:-}"     # texts per guard-model generate call

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${SIREN_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
cd "$ROOT"
# Values reach Python as arguments (siren/shellcmd.py), never pasted into its source: any MODEL is data.
lookup() { "$PY" -m siren.shellcmd "$@"; }  # a bad value: one line on stderr, status 2 (set -e stops here)
[ -n "$RUN" ] || RUN="$(lookup run_dir "$MODEL")"
[ -f "$RUN/results.json" ] || { echo "report: $RUN has no results.json: train first (bash train/run_general_siren.sh) or set RUN" >&2; exit 2; }
RUN="$(cd "$RUN" && pwd)"

if [ "$GUARDS" = "default" ]; then
  GUARDS="$(lookup paper_guard "$MODEL")"
fi
if [ "$EXTRA_DATASETS" = "default" ]; then
  DATA_DIR="$(lookup data_dir "$RUN/results.json")"
  DATA_DIR="${DATA_DIR:-${SIREN_DATA_DIR:-}}"
  EXTRA_DATASETS=""
  for d in advbench harmbench simple_safety_tests; do
    if [ -z "$DATA_DIR" ] || [ -d "$DATA_DIR/$d" ]; then EXTRA_DATASETS="$EXTRA_DATASETS $d"; fi
  done
fi

ARGS=(--run "$RUN")
[ -n "$OUT" ] && ARGS+=(--out "$OUT")
[ -n "$SYSTEMS" ] && ARGS+=(--systems $SYSTEMS)
[ -n "$GUARDS" ] && ARGS+=(--guards $GUARDS)
[ -n "${EXTRA_DATASETS// /}" ] && ARGS+=(--extra_datasets $EXTRA_DATASETS)
[ -n "$N_TRIALS" ] && ARGS+=(--n_trials "$N_TRIALS")
[ -n "$N_FOLDS" ] && ARGS+=(--n_folds "$N_FOLDS")
[ -n "$ALL_NEURONS_LIMIT" ] && ARGS+=(--all_neurons_limit "$ALL_NEURONS_LIMIT")
[ -n "$LATENCY_TEXTS" ] && ARGS+=(--latency_texts "$LATENCY_TEXTS")
[ -n "$DEVICE" ] && ARGS+=(--device "$DEVICE")
[ -n "$CACHE_DIR" ] && ARGS+=(--cache_dir "$(realpath -m "$CACHE_DIR")")
[ -n "$BATCH_TOKENS" ] && ARGS+=(--batch_tokens "$BATCH_TOKENS")
[ -n "$GUARD_DEVICE" ] && ARGS+=(--guard_device "$GUARD_DEVICE")
[ -n "$GUARD_BATCH_SIZE" ] && ARGS+=(--guard_batch_size "$GUARD_BATCH_SIZE")
export SIREN_REPORT_COMMAND="RUN=$RUN GUARDS='$GUARDS' bash scripts/report.sh  # siren report ${ARGS[*]} $*"
exec "$PY" -m siren report "${ARGS[@]}" "$@"
