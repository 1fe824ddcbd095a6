# Machine: 2 CPU cores of an AMD EPYC with AVX512-BF16 and no AMX (`dtype auto` -> bf16), 24 GiB, no GPU; nothing else
# ran during the benchmark. Code: commit 2bd6685 (training code as at a63bcc3 but for a weight_decay pass-through whose
# default is the old value; evaluation adds the 95% bootstrap intervals of macro-F1). The guard is byte for byte the one
# of epyc_a63bcc3/ (sha256 449a6e0f...). Peak RSS 1.38 GiB training (/usr/bin/time: 1,443,684 kB), 1.00 GiB evaluation
# (1,046,896 kB). The bare forward took 581.7 s before the pipeline and 537.6 s after it.
WORK=$WORK/b4 bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
