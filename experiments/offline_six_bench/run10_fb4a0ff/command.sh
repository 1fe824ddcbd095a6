# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark.
# Code: commit fb4a0ff (training code as in run9_e836edf/ and run8_c1eee8e/; the new compile path of siren.features is used only
# by SirenGuard.from_pretrained(compile=True)); the guard's siren.safetensors is byte for byte the one of run9, run8 and run7
# (sha256 fd53e815...), so F1 is unchanged.
# The bare forward took 355.8 s before the pipeline and 342.9 s after it; the table gives the time ratios against their mean
# with the range against either.
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/o12bench bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
# Earlier runs: run9_e836edf/ (619.6 s, 1.63x the floor's mean), run8_c1eee8e/ (480.0 s, 1.48x), run7_13b26e2/ (469.1 s, 1.55x),
# run6_1110403/ (1.49 GiB), run5_5cfebfd/, run4_e839214/ (2.06 GiB), run3_feca4a1/, run2_bca7295/ (both pooling types searched).
# Serving, this run's guard: ours (prepacked, as users get it), the authors' runtime, ours with prepack=False and ours with
# compile=True, rotating.
python scripts/benchmarks/bench_latency.py --guard $WORK/o12bench/guard --n 64 --plain_too --compiled_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency.json
