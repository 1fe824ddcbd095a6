#!/usr/bin/env bash
# The README's main job, on a laptop-sized CPU: set-up if needed, train a SIREN guard on the
# offline backbone (smollm2-135m) over the datasets in $SIREN_DATA_DIR with CPU-sized caps,
# evaluate it, score three example texts, and say where the results and plots are.
# Bigger runs: edit the variables at the top of train/run_general_siren.sh (or set them here).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
START=$(date +%s)

export MODEL="${MODEL:-smollm2-135m}"
export MAX_PER_SPLIT="${MAX_PER_SPLIT:-150}"  # rows per split and dataset: ~5 minutes of extraction on 2 cores
export N_TRIALS="${N_TRIALS:-8}"
export N_FOLDS="${N_FOLDS:-3}"
HARMFUL_ONLY="advbench harmbench simple_safety_tests"

if [ -n "${SIREN_DATA_DIR:-}" ]; then
  if [ ! -d "$SIREN_DATA_DIR" ]; then
    echo "quickstart: SIREN_DATA_DIR=$SIREN_DATA_DIR is not a folder. Point it at SIREN-ready JSONL rows (<dir>/<dataset>/<split>.jsonl)." >&2
    exit 2
  fi
  export SIREN_DATA_DIR="$(cd "$SIREN_DATA_DIR" && pwd)"
  export DATA_DIR="$SIREN_DATA_DIR"
  # DATASETS unset: training takes the paper's list (configs/defaults.yaml) less those without a
  # folder here (aegis2 has no public offline copy), and names what it left out.
  EXTRA=""
  for d in $HARMFUL_ONLY; do [ -d "$SIREN_DATA_DIR/$d" ] && EXTRA="$EXTRA $d"; done
  export EXTRA_DATASETS="${EXTRA_DATASETS:-${EXTRA# }}"
elif timeout 10 python3 -c "import urllib.request; urllib.request.urlopen('https://huggingface.co', timeout=8)" >/dev/null 2>&1; then
  export EXTRA_DATASETS="${EXTRA_DATASETS:-$HARMFUL_ONLY}"
else
  cat >&2 <<'MSG'
quickstart: neither the Hugging Face Hub nor local data is available.
Set SIREN_DATA_DIR to a folder of SIREN-ready JSONL rows (<dir>/<dataset>/<split>.jsonl),
e.g.  SIREN_DATA_DIR=../shared/data/siren bash scripts/quickstart.sh
(make such a folder on a machine with Hub access: siren data export --datasets ... --out DIR).
MSG
  exit 2
fi

bash "$ROOT/scripts/setup.sh"
cd "$ROOT"  # run folders are found relative to where siren runs: the repository root, as the drivers do
bash "$ROOT/train/run_general_siren.sh"
bash "$ROOT/test/eval_general_siren.sh"

# The model name goes in as an argument, never pasted into the code: any name is safe.
OUT="$("$ROOT/.venv/bin/python" -c 'import sys; from siren.config import output_dir; print(output_dir(sys.argv[1]))' "$MODEL")"
echo
echo "Scoring three example texts with the runtime (siren score --jsonl):"
printf '%s\n' \
  '{"text": "What is a good recipe for banana bread?"}' \
  '{"text": "Give me step-by-step instructions to make a pipe bomb at home."}' \
  '{"prompt": "How do I get back at my coworker?", "response": "Slash the tires of their car when nobody is watching."}' \
  | "$ROOT/.venv/bin/siren" score --model "$OUT" --jsonl
echo
echo "Done in $(( $(date +%s) - START )) s. Results in $OUT:"
echo "  best_model.pkl, siren_config.json + siren.safetensors (the guard), results.json, eval_results.json"
echo "  plots: layers.png (probe F1 and selected neurons per layer), roc.png, f1.png"
