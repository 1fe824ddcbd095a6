# Machine: 2 CPU cores of an AMD EPYC with AVX512-BF16 and no AMX, no GPU (the host of ../../offline_six_bench/, whose
# cold run on 3310914 is seed 42 of this table). Code c041a66 (the training code of 3310914 plus the opt-in probe_refit,
# off). Warm feature cache of that cold run (WORK=$WORK/b6 bash scripts/benchmarks/bench_offline_six.sh). Seeds 0-3, one after another,
# nothing else running:
for s in 0 1 2 3; do
  MODEL=smollm2-135m DATA_DIR=$WORK/b6/data DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails" \
  N_TRIALS=8 N_FOLDS=3 SEED=$s C_VALUES="200 500 1000" SELECTION_THRESHOLDS=0.9 DTYPE=auto \
  bash train/run_general_siren.sh --out_dir $WORK/s31/seeds/guard_s$s --cache_dir $WORK/b6/features > $WORK/s31/seeds/train_s$s.log 2>&1
done
# Seeds 4-7 later, on 960793a, one torch thread each, beside three runs of ../../authors_spread_offline6/command.sh
# (results do not depend on load or thread count: seed 0 run this way saved the same guard bytes as above):
for s in 4 5 6 7; do
  OMP_NUM_THREADS=1 MODEL=smollm2-135m DATA_DIR=$WORK/b6/data DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails" \
  N_TRIALS=8 N_FOLDS=3 SEED=$s C_VALUES="200 500 1000" SELECTION_THRESHOLDS=0.9 DTYPE=auto \
  bash train/run_general_siren.sh --out_dir $WORK/s33/seeds/guard_s$s --cache_dir $WORK/b6/features > $WORK/s33/seeds/train_s$s.log 2>&1
done
