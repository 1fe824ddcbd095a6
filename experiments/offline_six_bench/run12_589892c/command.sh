# Moved here from reports/offline_six_bench/ when a run on an AMD EPYC host took the top level (the --out paths below name the old place).
# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark.
# Code: commit 589892c (the head search frees the last trial's fit before reading the fold heads back, gathers out-of-fold
# rows piece by piece, validates 1,024 rows per product, keeps one best-epoch copy: memory only); the guard's
# siren.safetensors is byte for byte the one of run11 back to run7 (sha256 fd53e815...), so F1 is unchanged.
# The bare forward took 316.2 s before the pipeline and 298.5 s after it; the table gives the time ratios against their mean
# with the range against either. The host ran faster during the pipeline than during either floor timing (extraction 237.5 s
# against 298.5-316.2 s for a bare forward over the same rows; 334.6 s against 345.9-357.6 s in run11): read the ratios
# with this host's drift in mind.
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/o16bench bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
# Earlier runs: run11_f3757da/ (486.3 s, 1.38x the floor's mean) and repeat_f3757da/ (483.7 s, 1.20x), run10_fb4a0ff/ (537.4 s,
# 1.54x), run9_e836edf/ (619.6 s, 1.63x), run8_c1eee8e/ (480.0 s,
# 1.48x), run7_13b26e2/ (469.1 s, 1.55x), run6_1110403/ (1.49 GiB), run5_5cfebfd/, run4_e839214/ (2.06 GiB), run3_feca4a1/,
# run2_bca7295/ (both pooling types searched).
# Serving, on run11's guard (the same bytes as this run's): ours (prepacked, as users get it), the authors' runtime, ours with prepack=False, ours prepacked
# with every Linear its own product (unshared) and ours with compile=True, rotating. Code: 6b0e1b3 (serving as of cc7431b:
# q/k/v and gate/up share one packed product, the head's input layer in packed bf16, its block-diagonal layers by blocks).
python scripts/benchmarks/bench_latency.py --guard $WORK/o13bench/guard --n 64 --plain_too --unshared_too --compiled_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency.json
# Earlier runs of the same serving code (cc7431b), with the bench of cc7431b, whose batches of 32 (two chunks) did not
# rotate every runtime to the front; single texts were rotated as now:
python scripts/benchmarks/bench_latency.py --guard $WORK/o13bench/guard --n 64 --plain_too --compiled_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency_cc7431b_1.json
python scripts/benchmarks/bench_latency.py --guard $WORK/o13bench/guard --n 64 --plain_too --unshared_too --compiled_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency_cc7431b_2.json   # --unshared_too added by 6b0e1b3, run before its commit
python scripts/benchmarks/bench_latency.py --guard $WORK/o13bench/guard --n 64 --unshared_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency_cc7431b_3.json
# The serving code of f3757da (prepacked Linears, each its own product; the head dense in float32), same command with
# --plain_too --compiled_too: latency_f3757da.json.
