# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark.
# Code: commit e836edf (training code as in run8_c1eee8e/: the features hook's new path for unpadded batches gives the same
# bits, fit_head's new `ema` option is off by default); the guard's siren.safetensors is byte for byte the one of run8 and
# run7 (sha256 fd53e815...), so F1 is unchanged.
# This host ran slower than in run8 (the bare forward took 377.4 s before the pipeline and 385.1 s after it, against 338.5
# and 310.9 there); the table gives the time ratios against their mean with the range against either.
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/o11bench bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
# Earlier runs: run8_c1eee8e/ (480.0 s, 1.48x the floor's mean), run7_13b26e2/ (469.1 s, 1.55x), run6_1110403/ (1.49 GiB),
# run5_5cfebfd/, run4_e839214/ (2.06 GiB), run3_feca4a1/, run2_bca7295/ (both pooling types searched).
# Serving, this run's guard: ours (prepacked, as users get it), the authors' runtime, and ours with prepack=False, rotating.
python scripts/benchmarks/bench_latency.py --guard $WORK/o11bench/guard --n 64 --plain_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency.json
# Added later, code 7cea05e (SirenGuard.from_pretrained(compile=True)), the same guard: ours, theirs, plain and compiled, rotating.
python scripts/benchmarks/bench_latency.py --guard $WORK/o11bench/guard --n 64 --plain_too --compiled_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency_compiled.json
