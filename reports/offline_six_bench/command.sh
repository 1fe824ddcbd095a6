# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark.
# Code: commit f3757da (the head search's bf16 fits keep the first Linear's weight casts in buffers and multiply a
# contiguous copy of the output gradient: the same heads, faster); the guard's siren.safetensors is byte for byte the one
# of run10, run9, run8 and run7 (sha256 fd53e815...), so F1 is unchanged.
# The bare forward took 345.9 s before the pipeline and 357.6 s after it; the table gives the time ratios against their mean
# with the range against either.
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=/work/o13bench bash scripts/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
# Earlier runs: run10_fb4a0ff/ (537.4 s, 1.54x the floor's mean), run9_e836edf/ (619.6 s, 1.63x), run8_c1eee8e/ (480.0 s,
# 1.48x), run7_13b26e2/ (469.1 s, 1.55x), run6_1110403/ (1.49 GiB), run5_5cfebfd/, run4_e839214/ (2.06 GiB), run3_feca4a1/,
# run2_bca7295/ (both pooling types searched).
# Serving, this run's guard: ours (prepacked, as users get it), the authors' runtime, ours with prepack=False, ours prepacked
# with every Linear its own product (unshared) and ours with compile=True, rotating. Code: 6b0e1b3 (serving as of cc7431b:
# q/k/v and gate/up share one packed product, the head's input layer in packed bf16, its block-diagonal layers by blocks).
python scripts/bench_latency.py --guard /work/o13bench/guard --n 64 --plain_too --unshared_too --compiled_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency.json
# Earlier runs of the same serving code (cc7431b), with the bench of cc7431b, whose batches of 32 (two chunks) did not
# rotate every runtime to the front; single texts were rotated as now:
python scripts/bench_latency.py --guard /work/o13bench/guard --n 64 --plain_too --compiled_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency_cc7431b_1.json
python scripts/bench_latency.py --guard /work/o13bench/guard --n 64 --plain_too --unshared_too --compiled_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency_cc7431b_2.json   # --unshared_too added by 6b0e1b3, run before its commit
python scripts/bench_latency.py --guard /work/o13bench/guard --n 64 --unshared_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency_cc7431b_3.json
# The serving code of f3757da (prepacked Linears, each its own product; the head dense in float32), same command with
# --plain_too --compiled_too: latency_f3757da.json.
