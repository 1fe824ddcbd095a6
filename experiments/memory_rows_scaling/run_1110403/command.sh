# Machine: 2 CPU cores (Intel Xeon with AMX-BF16), 24 GiB, no GPU. Cold feature cache.
# 9,991 rows of the six offline datasets (1.71x the 5,859 offline-six protocol rows; openai_moderation and aegis have no more),
# the protocol's settings otherwise; compare with ../../../reports/offline_six_bench/ (5,859 rows).
# Cold run, code 1110403 (train_stages.log, results.json):
MODEL=smollm2-135m DATA_DIR=../shared/data/siren DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails" \
N_TRIALS=8 N_FOLDS=3 SEED=42 C_VALUES="200 500 1000" SELECTION_THRESHOLDS=0.9 MAX_PER_SPLIT="1200 400 600" \
/usr/bin/time -v bash train/run_general_siren.sh --out_dir $WORK/o8rows/guard --cache_dir $WORK/o8rows/features
# Warm rerun on the same cache, code fb873dd (probe layer chunks of 256 MiB; warm_stages.log):
MODEL=smollm2-135m DATA_DIR=../shared/data/siren DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails" \
N_TRIALS=8 N_FOLDS=3 SEED=42 C_VALUES="200 500 1000" SELECTION_THRESHOLDS=0.9 MAX_PER_SPLIT="1200 400 600" \
/usr/bin/time -v bash train/run_general_siren.sh --out_dir $WORK/o8rows/warm/guard --cache_dir $WORK/o8rows/features
# The earlier measurement (code 365de8e, before the child-process extraction and the fixed batch shapes): run_365de8e/.
