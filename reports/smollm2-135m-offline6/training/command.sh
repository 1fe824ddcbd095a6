# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark.
# Code: commit 484baf9 ("Defaults chosen on CV ..."); the report: commit 4e77d92 (its RESULTS.md says so).
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/o6run bash scripts/benchmarks/bench_offline_six.sh          # -> guard/ (results.json, eval_results.json), runs.json, floor.json; table in bench_offline_six.log
# the comparison report on that guard (harmful-only sets linked into the run's data dir):
for d in advbench harmbench simple_safety_tests; do ln -sfn "$PWD/../shared/data/siren/$d" $WORK/o6run/data/$d; done
RUN=$WORK/o6run/guard OUT=reports/smollm2-135m-offline6 bash scripts/report.sh   # 745 s
