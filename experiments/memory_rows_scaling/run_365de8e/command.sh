# Machine: 2 CPU cores (Intel Xeon with AMX-BF16), 24 GiB, no GPU. Code: commit 365de8e. Cold feature cache.
# 9,991 rows of the six offline datasets (1.71x the 5,859 offline-six protocol rows; openai_moderation and aegis have no more),
# the protocol's settings otherwise; compare with ../../../reports/offline_six_bench/ (5,859 rows, same code but for reports).
MODEL=smollm2-135m DATA_DIR=../shared/data/siren DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails" \
N_TRIALS=8 N_FOLDS=3 SEED=42 C_VALUES="200 500 1000" SELECTION_THRESHOLDS=0.9 MAX_PER_SPLIT="1200 400 600" \
/usr/bin/time -v bash train/run_general_siren.sh --out_dir $WORK/o7/rows2x/guard --cache_dir $WORK/o7/rows2x/features
