# Machine: 2 CPU cores of an AMD EPYC with AVX512-BF16 and no AMX (`dtype auto` -> bf16; the kind of CPU the protocol's
# reference run of the authors' code names: "AMD EPYC", 2 threads), 24 GiB, no GPU; nothing else ran during the benchmark.
# On this host bf16 is also the faster dtype for a bare forward (1.6-1.7x fp32 on 10% of the rows: dtype_check.log).
# Code: commit 86be5d1 (the run saves and loads a wide head without holding it twice); every head and F1 figure is the
# one of epyc_215c3ac/ (the same guard bytes, sha256 449a6e0f...), run before that change on this host: its training
# peaked at 1.79 GiB, in the save after the test stage, when the search had picked the widest head ([2048, 1600, 1536]
# per fold, a 379 MB ensemble).
# The bare forward took 647.0 s before the pipeline and 659.4 s after it (531.6 s mean in epyc_215c3ac/, an hour earlier:
# this host's speed drifts); the table gives the time ratios against their mean with the range against either.
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=/work/b2 bash scripts/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
# The run before the memory change, same host (epyc_215c3ac/): WORK=/work/b1 bash scripts/bench_offline_six.sh on 215c3ac.
# Serving, on this run's guard: ours (prepacked, as users get it), the authors' runtime and ours with prepack=False, rotating
# (code 7d432ec):
python scripts/bench_latency.py --guard /work/b2/guard --n 64 --plain_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency_2.json
python scripts/bench_latency.py --guard /work/r2 --n 64 --plain_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency.json   # /work/r2: a warm retrain of epyc_215c3ac's rows on 86be5d1, the same guard bytes
# The guard's head is the widest the search allows, and the authors' runtime computes a fold ensemble's block-diagonal
# layers densely in fp32, so this guard flatters ours. A guard with a narrow head ([640, 128, 64] per fold), from the same
# cache with SEED=0 (train/run_general_siren.sh --out_dir /work/r3 --cache_dir /work/b2/features, the protocol's other settings):
python scripts/bench_latency.py --guard /work/r3 --n 64 --plain_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency_seed0_guard.json
# Earlier runs on an Intel Xeon host with AMX: run12_589892c/ (366.0 s, 1.19x the floor; serving 1.24-1.30x on single
# texts) and the run*/ folders it lists.
