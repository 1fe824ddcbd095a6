# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark.
# Code: commit bca7295 (training and loading code as of ce499ed; later commits change docs and reports only).
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/o6run2 bash scripts/benchmarks/bench_offline_six.sh        # cold cache; the table is bench_offline_six.log; guard files: results.json, eval_results.json
python scripts/benchmarks/bench_latency.py --guard $WORK/o6run2/guard --n 32 --data_dir ../shared/data/siren --out latency.json   # SirenGuard vs llm-siren's, same guard
