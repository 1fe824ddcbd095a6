# Machine: 2 CPU cores (Intel Xeon with AMX-BF16), no GPU. Code f8449e7. Warm feature cache of the offline-six bench run
# (WORK=$WORK/o9bench bash scripts/benchmarks/bench_offline_six.sh, ../offline_six_bench/), whose seed is 42. Seeds 0, 1, 2, one after another:
cd $WORK/main
for s in 0 1 2; do
  MODEL=smollm2-135m DATA_DIR=$WORK/o9bench/data DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails" \
  N_TRIALS=8 N_FOLDS=3 SEED=$s C_VALUES="200 500 1000" SELECTION_THRESHOLDS=0.9 \
  bash train/run_general_siren.sh --out_dir $WORK/o9/seeds/guard_s$s --cache_dir $WORK/o9bench/features > $WORK/o9/seeds/train_s$s.log 2>&1
done
echo finished > $WORK/o9/seeds/done
