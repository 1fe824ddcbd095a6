#!/usr/bin/env bash
# The comparison report of a trained run: SIREN against text baselines, single-layer probes,
# ablations and (given their weights) the guard models, all on the run's split ids.
# -> reports/<run folder name>/RESULTS.md (+ results.json, roc.png, layers.png)
# Variables can be overridden from the environment, e.g.
#   RUN=path/to/run bash scripts/report.sh
#   MODEL=qwen3-0.6b bash scripts/report.sh        # with Hub access: adds the paper's Guard row (Qwen3Guard-Gen-0.6B)
set -euo pipefail

MODEL="${MODEL:-smollm2-135m}"               # the backbone the run was trained on
RUN="${RUN:-}"                               # the trained run folder (default: train/probes/optuna/${MODEL}_general)
OUT="${OUT:-}"                               # default: reports/<run folder name>
SYSTEMS="${SYSTEMS:-}"                       # default: all (tfidf_lr profanity_check last_layer best_layer all_neurons_mlp uniform_weights siren)
GUARDS="${GUARDS-default}"                   # guard models: registry names or NAME=FOLDER; "default": the paper's guard for MODEL, if any; "": none
EXTRA_DATASETS="${EXTRA_DATASETS-default}"   # harmful-only test sets; "default": those in the data dir (or all, with the Hub)
N_TRIALS="${N_TRIALS:-}"                     # head search of the MLP systems (default: the run's)
N_FOLDS="${N_FOLDS:-}"
ALL_NEURONS_LIMIT="${ALL_NEURONS_LIMIT:-}"   # all_neurons_mlp: all L*d features up to this many, else a random subset of SIREN's size
DEVICE="${DEVICE:-}"                         # default: the run's
GUARD_DEVICE="${GUARD_DEVICE:-auto}"

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

ARGS=(--run "$RUN" --guard_device "$GUARD_DEVICE")
[ -n "$OUT" ] && ARGS+=(--out "$OUT")
[ -n "$SYSTEMS" ] && ARGS+=(--systems $SYSTEMS)
[ -n "$GUARDS" ] && ARGS+=(--guards $GUARDS)
[ -n "${EXTRA_DATASETS// /}" ] && ARGS+=(--extra_datasets $EXTRA_DATASETS)
[ -n "$N_TRIALS" ] && ARGS+=(--n_trials "$N_TRIALS")
[ -n "$N_FOLDS" ] && ARGS+=(--n_folds "$N_FOLDS")
[ -n "$ALL_NEURONS_LIMIT" ] && ARGS+=(--all_neurons_limit "$ALL_NEURONS_LIMIT")
[ -n "$DEVICE" ] && ARGS+=(--device "$DEVICE")
export SIREN_REPORT_COMMAND="RUN=$RUN GUARDS='$GUARDS' bash scripts/report.sh  # siren report ${ARGS[*]} $*"
exec "$PY" -m siren report "${ARGS[@]}" "$@"
