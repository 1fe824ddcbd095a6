# Machine: 2 CPU cores (Intel Xeon with AMX-BF16), 24 GiB, no GPU.
# results.log, at commit 8c12593 (before siren set the cap on import), one process after another:
python experiments/memory_knobs/extract_peak.py none $WORK/o6run/data
python experiments/memory_knobs/extract_peak.py batch $WORK/o6run/data batch
ONEDNN_PRIMITIVE_CACHE_CAPACITY=128 python experiments/memory_knobs/extract_peak.py cap128 $WORK/o6run/data
ONEDNN_PRIMITIVE_CACHE_CAPACITY=16 python experiments/memory_knobs/extract_peak.py cap16 $WORK/o6run/data
# head_search_warm.log (commit 382bbca; the feature cache of the cold bench run in ../offline_six_bench):
MODEL=smollm2-135m DATA_DIR=$WORK/o6run4/data DATASETS="toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails" \
N_TRIALS=8 N_FOLDS=3 SEED=42 C_VALUES="200 500 1000" SELECTION_THRESHOLDS=0.9 \
/usr/bin/time -v bash train/run_general_siren.sh --out_dir $TMPDIR/o6warm/guard --cache_dir $WORK/o6run4/features
