# Machine: 2 CPU cores of an AMD EPYC with AVX512-BF16 and no AMX (`dtype auto` -> bf16; the kind of CPU the protocol's
# reference run of the authors' code names: "AMD EPYC", 2 threads), 24 GiB, no GPU; nothing else ran during the benchmark.
# On this host bf16 is also the faster dtype for a bare forward (1.6-1.7x fp32 on 10% of the rows: ../../../reports/offline_six_bench/dtype_check.log).
# Code: commit a63bcc3 (training and evaluation code as at 84cb4bd). The guard is byte for byte the one of
# epyc_86be5d1/ and epyc_215c3ac/ (sha256 449a6e0f...): the head search picked the widest head the paper's range allows
# ([2048, 1600, 1536] per fold, a 379 MB fold ensemble). Peak RSS 1.38 GiB training (/usr/bin/time: 1,448,876 kB),
# 1.00 GiB evaluation (1,047,084 kB).
# The bare forward took 554.7 s before the pipeline and 490.8 s after it (653.2 s mean in epyc_86be5d1/, 531.6 s in
# epyc_215c3ac/: this host's speed drifts); the table gives the time ratios against their mean with the range against either.
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/b3 bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
# Earlier on this host: epyc_86be5d1/ (910.4 s, 1.39x the floor, peak 1.35 GiB) and epyc_215c3ac/ (756.7 s, 1.42x, peak
# 1.79 GiB, before the memory fix of 86be5d1).
# The same guard evaluated again with the 95% bootstrap intervals of macro-F1 (code a0d3daa; same F1 as
# eval_results.json; 1,000 resamples of each test set's rows, seeded): average 0.7378, interval 0.7080-0.7672.
cp -r $WORK/b3/guard $WORK/exp/g3 && python -m siren eval --guard $WORK/exp/g3 && cp $WORK/exp/g3/eval_results.json experiments/offline_six_bench/epyc_a63bcc3/eval_results_ci.json
