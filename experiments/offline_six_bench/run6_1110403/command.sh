# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark
# (the host's speed drifted within the run: the same head search took 117.6 s in run5_5cfebfd/ and 159.9 s here).
# Code: commit 1110403 (as 5cfebfd, plus streamed guard saving). The bench script timed the floor once, before the pipeline
# (it now times it before and after).
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/o8run2 bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
# Earlier runs: run5_5cfebfd/ (same guard), run4_e839214/ (2.06 GiB), run3_feca4a1/, run2_bca7295/ (both pooling types searched).
python scripts/benchmarks/bench_latency.py --guard $WORK/o8run2/guard --n 32 --data_dir ../shared/data/siren --out experiments/offline_six_bench/run6_1110403/latency.json   # at the final commit (score_batch: one rung per batch)
