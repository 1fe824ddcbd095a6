# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark.
# Code: commit 13b26e2 (cache reads release their mapped pages; the head standardises batch by batch; inference_mode).
# The host's speed drifted within the run: the same bare forward took 343.0 s before the pipeline and 262.5 s after it,
# so the table gives the time ratios against their mean with the range against either.
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/o9bench bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
# The guard's siren.safetensors is byte for byte the one of run6_1110403/ (sha256 fd53e815...), so F1 is unchanged.
# Earlier runs: run6_1110403/ (1.49 GiB), run5_5cfebfd/, run4_e839214/ (2.06 GiB), run3_feca4a1/, run2_bca7295/ (both pooling types searched).
python scripts/benchmarks/bench_latency.py --guard $WORK/o9bench/guard --n 32 --data_dir ../shared/data/siren --out reports/offline_six_bench/latency.json
