# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark.
# Code: commit c1eee8e (its pipeline code is that of 13b26e2 and 50209f3; the commits between changed structure, scripts and reports, no number).
# The bare forward took 338.5 s before the pipeline and 310.9 s after it; the table gives the time ratios against their mean
# with the range against either.
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/o10bench bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
# The guard's siren.safetensors is byte for byte the one of run7_13b26e2/ and run6_1110403/ (sha256 fd53e815...), so F1 is unchanged.
# Earlier runs: run7_13b26e2/ (469.1 s, 1.55x the floor's mean), run6_1110403/ (1.49 GiB), run5_5cfebfd/, run4_e839214/ (2.06 GiB),
# run3_feca4a1/, run2_bca7295/ (both pooling types searched).
python scripts/benchmarks/bench_latency.py --guard $WORK/o10bench/guard --n 32 --data_dir ../shared/data/siren --out reports/offline_six_bench/latency.json
# Serving with the backbone's Linear weights prepacked (siren.runtime.prepack; ours is also timed without, in the same rotation;
# 64 texts, so the lengths reach further than the 32 above). Code: the commit that added siren/runtime/prepack.py.
python scripts/benchmarks/bench_latency.py --guard $WORK/o10bench/guard --n 64 --plain_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency_prepack.json
# latency_prepack.json: the same guard with the code of 721804c (ours prepacked), 64 texts (see the line above it).
