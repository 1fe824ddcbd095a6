# Machine: 2 CPU cores (x86-64, AVX2), 24 GiB, no GPU; shared with other jobs while it ran,
# so the stage times in results.json are NOT a speed measurement (use scripts/bench_*.py).
# Code: commit 2af5962 for training (the flags below are this commit's names), 089cb4a for eval.
# Data: the offline copies in ../shared/data/siren (not the paper's splits: not comparable with its table).
DATA_DIR=../shared/data/siren MODEL=smollm2-135m DATASETS="toxic_chat openai_moderation aegis wildguard beavertails" \
  MAX_PER_SPLIT="200 100 150" N_TRIALS=4 N_FOLDS=3 bash train/run_general_siren.sh --out_dir <run folder>
siren eval --guard <run folder> --data_dir ../shared/data/siren --extra_datasets advbench harmbench simple_safety_tests
