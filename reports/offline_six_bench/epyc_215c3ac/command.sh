# Machine: the AMD EPYC host of ../command.sh. Code: commit 215c3ac, before the run saved and loaded a wide head without
# holding it twice: training peaked at 1.79 GiB (the process's own stage lines say 1.39 GiB up to the test stage; an RSS
# trace of a warm retrain put the rest in the save: the head's weights read back whole for best_model.pkl, as bytes and as
# tensors). The guard and F1 are the same as in ../ (sha256 449a6e0f...).
WORK=/work/b1 bash scripts/bench_offline_six.sh
