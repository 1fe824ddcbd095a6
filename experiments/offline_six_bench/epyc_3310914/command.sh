# Machine: 2 CPU cores of an AMD EPYC with AVX512-BF16 and no AMX (`dtype auto` -> bf16; the kind of CPU the protocol's
# reference run of the authors' code names: "AMD EPYC", 2 threads), 24 GiB, no GPU; nothing else ran during the benchmark.
# On this host bf16 is also the faster dtype for a bare forward (1.6-1.7x fp32 on 10% of the rows: dtype_check.log).
# Code: commit 3310914. The training code differs from epyc_d381162/'s by the probes' C rule, probe_c_rule: one_se (per
# layer the smallest C of the grid whose validation F1 is within one bootstrap standard error of the best; chosen on CV and
# held-out train + validation rows: ../../head_search_offline6/README.md). It picked 5,287 neurons instead of 7,027; the head
# search then drew [1600, 960] per fold (CV F1 0.7697); siren.safetensors sha256 245990680dc2d6a5....
# Peak RSS 1.07 GiB training (/usr/bin/time: 1,118,056 kB), 0.69 GiB evaluation (721,564 kB).
# The bare forward took 612.0 s before the pipeline and 568.2 s after it (545.7 / 530.0 s in epyc_d381162/: this host's
# speed drifts); the table gives the time ratios against their mean with the range against either.
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/b6 bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
