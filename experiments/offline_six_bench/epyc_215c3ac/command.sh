# Machine: the AMD EPYC host of ../../../reports/offline_six_bench/command.sh. Code: commit 215c3ac, before the run saved and loaded a wide head without
# holding it twice: training peaked at 1.79 GiB (the process's own stage lines say 1.39 GiB up to the test stage; an RSS
# trace of a warm retrain put the rest in the save: the head's weights read back whole for best_model.pkl, as bytes and as
# tensors). The guard and F1 are the same as in ../ (sha256 449a6e0f...).
WORK=$WORK/b1 bash scripts/benchmarks/bench_offline_six.sh
