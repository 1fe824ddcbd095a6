# Machine: the AMD EPYC host of ../../../reports/offline_six_bench/command.sh. Code: commit 86be5d1, the first with the tensor-by-tensor safetensors reader;
# the same guard bytes as ../ (sha256 449a6e0f...). Peak RSS 1.35 GiB (training), 1.00 GiB (evaluation).
# The bare forward took 647.0 s before the pipeline and 659.4 s after it.
WORK=$WORK/b2 bash scripts/benchmarks/bench_offline_six.sh        # cold cache; table: bench_offline_six.log; train_stages.log: the stage lines of train.log
