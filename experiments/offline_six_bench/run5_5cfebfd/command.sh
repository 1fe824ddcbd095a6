# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark.
# Code: commit 5cfebfd (fixed-shape extraction batches, extraction in a child process, float16 head input,
# fold heads on disk). The guard is bit for bit the one of ../ (commit 1110403 only changed how files are saved).
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py).
WORK=$WORK/o8run1 bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
