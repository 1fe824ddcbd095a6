# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark.
# Code: commit f3757da (the head search's bf16 fits keep the first Linear's weight casts in buffers and multiply a
# contiguous copy of the output gradient: the same heads, faster); the guard's siren.safetensors is byte for byte the one
# of run10, run9, run8 and run7 (sha256 fd53e815...), so F1 is unchanged.
# The bare forward took 345.9 s before the pipeline and 357.6 s after it; the table gives the time ratios against their mean
# with the range against either.
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/o13bench bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
# Its serving figures: ../run12_589892c/latency_f3757da.json (the latency command in ../run12_589892c/command.sh, on this run's guard).
