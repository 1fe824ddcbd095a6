# Machine: 2 CPU cores of an AMD EPYC with AVX512-BF16 and no AMX (`dtype auto` -> bf16; the kind of CPU the protocol's
# reference run of the authors' code names: "AMD EPYC", 2 threads), 24 GiB, no GPU; nothing else ran during the benchmark.
# On this host bf16 is also the faster dtype for a bare forward (1.6-1.7x fp32 on 10% of the rows: dtype_check.log).
# Code: commit 67a668b, the training code of 3310914 (../../experiments/offline_six_bench/epyc_3310914/) plus the opt-in probe_refit (off) and comments. The
# same guard bytes as 3310914's run (siren.safetensors sha256 245990680dc2d6a5...), so the same test F1: 5,287 neurons
# (probe_c_rule one_se), the head search drew [1600, 960] per fold (CV F1 0.7697).
# Peak RSS 1.06 GiB training (the wrapper's ru_maxrss: 1,115,376 kB), 0.69 GiB evaluation (724,324 kB).
# The bare forward took 495.6 s before the pipeline and 560.8 s after it (612.0 / 568.2 s in ../../experiments/offline_six_bench/epyc_3310914/: this host's
# speed drifts); the table gives the time ratios against their mean with the range against either.
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/b7 bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
# Before it on this host: ../../experiments/offline_six_bench/epyc_3310914/ (630.2 s, 1.07x its floor of 590.1 s, extraction 0.86x, head search 90.6 s, peak
# 1.07 GiB; the same guard and F1).
# Earlier on this host: ../../experiments/offline_six_bench/epyc_d381162/ (716.6 s, 1.33x the floor, peak 1.36 GiB, the probes' best-F1 C rule: average test
# F1 0.7378), ../../experiments/offline_six_bench/epyc_2bd6685/ (707.1 s, 1.26x), ../../experiments/offline_six_bench/epyc_a63bcc3/ (702.7 s, 1.34x), ../../experiments/offline_six_bench/epyc_86be5d1/ (910.4 s, 1.39x) and
# ../../experiments/offline_six_bench/epyc_215c3ac/ (756.7 s, 1.42x, peak 1.79 GiB, before the memory fix of 86be5d1).
# Serving figures (latency*.json) were measured on epyc_d381162's guard (the same bytes as $WORK/b2/guard, $WORK/r2) with
# the serving code unchanged since; ours (prepacked, as users get it), the authors' runtime and ours with prepack=False,
# rotating (code 7d432ec):
python scripts/benchmarks/bench_latency.py --guard $WORK/b2/guard --n 64 --plain_too --data_dir ../shared/data/siren --out experiments/offline_six_bench/latency_2.json
python scripts/benchmarks/bench_latency.py --guard $WORK/r2 --n 64 --plain_too --data_dir ../shared/data/siren --out reports/offline_six_bench/latency.json   # $WORK/r2: a warm retrain of epyc_215c3ac's rows on 86be5d1, the same guard bytes
# That guard's head is the widest the search allows, and the authors' runtime computes a fold ensemble's block-diagonal
# layers densely in fp32, so it flatters ours. A guard with a narrow head ([640, 128, 64] per fold), from the same
# cache with SEED=0 (train/run_general_siren.sh --out_dir $WORK/r3 --cache_dir $WORK/b2/features, the protocol's other settings):
python scripts/benchmarks/bench_latency.py --guard $WORK/r3 --n 64 --plain_too --data_dir ../shared/data/siren --out experiments/offline_six_bench/latency_seed0_guard.json
# Earlier runs on an Intel Xeon host with AMX: ../../experiments/offline_six_bench/run12_589892c/ (366.0 s, 1.19x the floor; serving 1.24-1.30x on single
# texts) and the run*/ folders it lists.
# Serving on epyc_3310914's guard (the same bytes as this run's; the one_se rule's, [1600, 960] per fold; commit c1c107b,
# serving code as above): single texts
# 1.41x the authors' runtime, batches of 32 9.40x:
python scripts/benchmarks/bench_latency.py --guard $WORK/b6/guard --n 64 --plain_too --data_dir ../shared/data/siren --out experiments/offline_six_bench/latency_one_se_guard.json
