#!/usr/bin/env bash
# The offline-six benchmark: our pipeline on exactly the rows the authors' code was measured on
# (../shared/protocols/offline_six/), with the protocol's settings (smollm2-135m, the dtype our
# default picks for this device, C 200/500/1000, selection threshold 0.9, 8 trials x 3 folds,
# seed 42; pooling: our default, see below) and a cold feature cache. It also times a bare
# forward pass of the backbone over the same rows and batches (scripts/benchmarks/forward_floor.py), the
# floor that end-to-end time is compared with, before and again after the pipeline. Runs train/run_general_siren.sh and
# test/eval_general_siren.sh, then prints one table: per stage our time beside the authors',
# peak RSS beside theirs, and per-dataset test macro-F1 beside theirs with the average.
#
#   bash scripts/benchmarks/bench_offline_six.sh                      # the full protocol (about 20 min on a 2-core AMX host, both floors included)
#   MAX_PER_SPLIT="20 10 10" N_TRIALS=2 bash scripts/benchmarks/bench_offline_six.sh   # a smoke run on capped rows
#
# Skips (exit 0) when the protocol folder is absent. WORK (default: a new temp dir) holds the
# built data dir, the cold feature cache and the outputs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${PROTOCOL:-}" ]; then   # beside the checkout (../shared), or one level up for a worktree
  for p in "$ROOT/../shared/protocols/offline_six" "$ROOT/../../shared/protocols/offline_six"; do
    [ -f "$p/build.py" ] && { PROTOCOL="$p"; break; }
  done
fi
PROTOCOL="${PROTOCOL:-$ROOT/../shared/protocols/offline_six}"
if [ ! -f "$PROTOCOL/build.py" ] || [ ! -f "$PROTOCOL/reference.json" ]; then
  echo "bench_offline_six: no protocol at $PROTOCOL (build.py + reference.json): skipped"
  exit 0
fi
PROTOCOL="$(cd "$PROTOCOL" && pwd)"
WORK="${WORK:-$(mktemp -d -t siren_offline_six.XXXXXX)}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
PY="${SIREN_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

"$PY" "$PROTOCOL/build.py" "$WORK/data" > "$WORK/build.log"

export MODEL="${MODEL:-smollm2-135m}"
export DATA_DIR="$WORK/data"
export DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails"
export MAX_PER_SPLIT="${MAX_PER_SPLIT:-}"   # empty: every protocol row (already 600/200/300 at most)
export N_TRIALS="${N_TRIALS:-8}" N_FOLDS="${N_FOLDS:-3}" SEED="${SEED:-42}"
export C_VALUES="200 500 1000" SELECTION_THRESHOLDS="0.9" DTYPE="${DTYPE:-auto}"
# Pooling: our default (configs/defaults.yaml: mlp_mean, which won CV against residual_mean in
# every run; experiments/head_search_offline6). POOLING_TYPES=residual_mean runs
# the protocol's setting alone. Every other head setting is our default too.
export POOLING_TYPES="${POOLING_TYPES:-}"
OUT="$WORK/guard"

# The floor: a bare forward pass of the same backbone over the same rows and batches.
FLOOR_ARGS=(--model "$MODEL" --data_dir "$DATA_DIR" --datasets $DATASETS)
[ "$DTYPE" != "auto" ] && FLOOR_ARGS+=(--dtype "$DTYPE")
[ -n "$MAX_PER_SPLIT" ] && FLOOR_ARGS+=(--max_per_split $MAX_PER_SPLIT)
"$PY" "$ROOT/scripts/benchmarks/forward_floor.py" "${FLOOR_ARGS[@]}" > "$WORK/floor.json" 2> "$WORK/floor.log"

# Each driver in its own process, timed with its peak RSS: a fresh wrapper process per driver
# reads its children's ru_maxrss (the largest process of that driver alone; this process's own
# RUSAGE_CHILDREN would carry the first driver's peak into the second's).
"$PY" - "$ROOT" "$OUT" "$WORK" <<'PY'
import json, resource, subprocess, sys, time
root, out, work = sys.argv[1:4]
WRAP = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
        "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)")
runs = {}
for name, cmd in (("train", ["bash", f"{root}/train/run_general_siren.sh", "--out_dir", out,
                             "--cache_dir", f"{work}/features"]),
                  ("eval", ["bash", f"{root}/test/eval_general_siren.sh"])):
    if name == "eval":
        import os
        os.environ["MODEL"] = out
    t = time.perf_counter()
    with open(f"{work}/{name}.log", "w") as log:
        rc = subprocess.call([sys.executable, "-c", WRAP, f"{work}/{name}.maxrss"] + cmd,
                             stdout=log, stderr=subprocess.STDOUT)
    runs[name] = {"seconds": time.perf_counter() - t, "rc": rc,
                  "peak_rss_gib": int(open(f"{work}/{name}.maxrss").read() or 0) / 2**20}
    if rc != 0:
        sys.exit(f"bench_offline_six: {name} failed (exit {rc}); see {work}/{name}.log")
json.dump(runs, open(f"{work}/runs.json", "w"), indent=2)
PY

# The floor again, after the pipeline: this host's speed drifts by 10-30% within minutes, so the
# ratios are given against the mean of the floor before and after, with the range they span.
"$PY" "$ROOT/scripts/benchmarks/forward_floor.py" "${FLOOR_ARGS[@]}" > "$WORK/floor_after.json" 2> "$WORK/floor_after.log"

"$PY" - "$PROTOCOL/reference.json" "$OUT" "$WORK/runs.json" "$WORK/floor.json" "$WORK/floor_after.json" <<'PY'
import json, sys
from pathlib import Path
ref = json.load(open(sys.argv[1]))
out = Path(sys.argv[2])
runs = json.load(open(sys.argv[3]))
floor, floor_after = (json.loads(Path(p).read_text().strip().splitlines()[-1]) for p in sys.argv[4:6])
floors = (floor["forward_s"], floor_after["forward_s"])
floor_mean = sum(floors) / 2
res = json.loads((out / "results.json").read_text())
ev = json.loads((out / "eval_results.json").read_text())
ours_t, rt = res["timings_s"], ref["times"]
parts = rt["stage3_parts"]
stages = [  # (stage, ours, theirs)
    ("extraction", ours_t.get("extract", 0.0), rt["stage1_representation_extraction_s"]),
    ("probes", ours_t.get("probes", 0.0), rt["stage2_layer_probes_s"]),
    ("head search", ours_t.get("optuna", 0.0), parts["optuna_s"]),
    ("final head", ours_t.get("final_head", 0.0), parts["final_model_s"]),
    ("evaluation", runs["eval"]["seconds"], rt["evaluation_total_s"]),
]
total_ours = runs["train"]["seconds"] + runs["eval"]["seconds"]
stages.append(("total (train + eval)", total_ours, ref["total_wall_s"]))
cfg = res["config"]
print(f"\noffline-six: {cfg['model']}, pooling {res['chosen']['pooling_type']} (of {', '.join(cfg['pooling_types'])}), "
      f"final head {cfg.get('final_head')}, dtype {json.loads((out / 'siren_config.json').read_text()).get('siren', {}).get('dtype')}, "
      f"caps {cfg.get('max_per_split') or 'protocol rows'}, {cfg['n_trials']} trials x {cfg['n_folds']} folds, seed {cfg['seed']}, cold cache")
if cfg.get("max_per_split"):
    print("(rows capped below the protocol's: times and F1 are not comparable with the authors')")
print(f"{'stage':22s} {'ours_s':>9s} {'theirs_s':>9s} {'theirs/ours':>11s}")
for name, o, t in stages:
    print(f"{name:22s} {o:9.1f} {t:9.1f} {t / max(o, 1e-9):10.1f}x")
print(f"{'bare forward (floor)':22s} {floor_mean:9.1f} {'':>9s}   "
      f"(mean of {floors[0]:.1f} before and {floors[1]:.1f} after; {floor['n_texts']} texts, "
      f"{floor['real_tokens']} tokens, {floor['dtype']})")
ext = ours_t.get('extract', 0.0)
print(f"end to end / floor: {total_ours / floor_mean:.2f}x ({total_ours / max(floors):.2f}-{total_ours / min(floors):.2f})   "
      f"extraction / floor: {ext / floor_mean:.2f}x ({ext / max(floors):.2f}-{ext / min(floors):.2f})")
rss = max(runs["train"]["peak_rss_gib"], runs["eval"]["peak_rss_gib"])
print(f"{'peak RSS (GiB)':22s} {rss:9.2f} {ref['peak_rss_mib']['overall_mib'] / 1024:9.2f}"
      f"   (train {runs['train']['peak_rss_gib']:.2f}, eval {runs['eval']['peak_rss_gib']:.2f})")
print(f"\n{'dataset':20s} {'ours F1':>8s} {'theirs F1':>9s} {'diff':>7s}   ours: 95% bootstrap interval")
theirs = {k: v["f1_macro"] for k, v in ref["test_per_dataset"].items()}
ci = lambda e: (f"   {e['f1_ci95'][0]:.4f}-{e['f1_ci95'][1]:.4f}" if e.get("f1_ci95") else "")  # noqa: E731
for name, f1 in ev["f1"].items():
    t = theirs.get(name, float("nan"))
    print(f"{name:20s} {f1:8.4f} {t:9.4f} {f1 - t:+7.4f}{ci(ev['datasets'][name])}")
avg_t = ref["test_average"]["f1_macro"]
print(f"{'average':20s} {ev['average_f1']:8.4f} {avg_t:9.4f} {ev['average_f1'] - avg_t:+7.4f}{ci(ev['average'])}")
PY
echo "outputs: $WORK"
