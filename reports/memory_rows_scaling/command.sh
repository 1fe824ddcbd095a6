# Machine: 2 CPU cores (Intel Xeon with AMX-BF16), 24 GiB, no GPU. Cold feature cache. Nothing else ran beside it.
# 9,991 rows of the six offline datasets (1.71x the 5,859 offline-six protocol rows; openai_moderation and aegis have no more),
# the protocol's settings otherwise; compare with ../offline_six_bench/ (5,859 rows, the same code).
# Cold run, code 13b26e2 (train_stages.log: the stage lines and /usr/bin/time's figures; results.json):
MODEL=smollm2-135m DATA_DIR=../shared/data/siren DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails" \
N_TRIALS=8 N_FOLDS=3 SEED=42 C_VALUES="200 500 1000" SELECTION_THRESHOLDS=0.9 MAX_PER_SPLIT="1200 400 600" \
/usr/bin/time -v bash train/run_general_siren.sh --out_dir $WORK/o9rows/guard --cache_dir $WORK/o9rows/features
# siren.safetensors: sha256 aaeae986..., the same bytes as the runs at 1110403 and fb873dd (../../experiments/memory_rows_scaling/run_1110403/).
# Earlier: ../../experiments/memory_rows_scaling/run_1110403/ (1.66-1.67 GiB at these rows), ../../experiments/memory_rows_scaling/run_365de8e/ (before the extraction child and the fixed batch shapes).
# Twice the rows (12,170 = 2.08x the protocol's 5,859; train/validation/test caps 2000 600 1000), cold, code 630e41d
# (../../experiments/memory_rows_scaling/run_2x_630e41d/: stage lines, /usr/bin/time's figures, results.json; guard sha256 5a2845cb...):
MODEL=smollm2-135m DATA_DIR=../shared/data/siren DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails" \
N_TRIALS=8 N_FOLDS=3 SEED=42 C_VALUES="200 500 1000" SELECTION_THRESHOLDS=0.9 MAX_PER_SPLIT="2000 600 1000" \
/usr/bin/time -v bash train/run_general_siren.sh --out_dir $WORK/o15rows/guard --cache_dir $WORK/o15rows/features
# The same with code 9a71edd, warm (features cached by the run above; run_2x_final/train_stages.log, results.json):
# the same command with --out_dir $WORK/o15rows/warm2. And the protocol rows (1x) with 9a71edd, warm
# (run_2x_final/train_stages_1x.log; guard sha256 fd53e815..., as every offline-six run):
/usr/bin/time -v env MODEL=smollm2-135m DATA_DIR=$WORK/o9bench/data DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails" \
N_TRIALS=8 N_FOLDS=3 SEED=42 C_VALUES="200 500 1000" SELECTION_THRESHOLDS=0.9 bash train/run_general_siren.sh --out_dir $WORK/o15/warm1x --cache_dir $WORK/o9bench/features
# AMD EPYC host (AVX512-BF16, no AMX), code a63bcc3, cold, nothing else running (epyc_2x_a63bcc3/):
MODEL=smollm2-135m DATA_DIR=../shared/data/siren DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails" \
N_TRIALS=8 N_FOLDS=3 SEED=42 C_VALUES="200 500 1000" SELECTION_THRESHOLDS=0.9 MAX_PER_SPLIT="2000 600 1000" \
/usr/bin/time -v bash train/run_general_siren.sh --out_dir $WORK/x2/guard --cache_dir $WORK/x2/features
