# Machine: 2 CPU cores (Intel Xeon with AMX-BF16: `dtype auto` -> bf16), 24 GiB, no GPU; nothing else ran during the benchmark.
# Code: commit e839214 (default pooling mlp_mean, oneDNN primitive cache 128, head inputs in bf16, fold rows read in chunks, trim between fits).
# Data: the offline-six protocol rows (../shared/protocols/offline_six/build.py), the rows the authors' code was measured on.
WORK=$WORK/o6run4 bash scripts/benchmarks/bench_offline_six.sh        # cold cache; the table is bench_offline_six.log; guard files: results.json, eval_results.json
python scripts/benchmarks/bench_latency.py --guard $WORK/o6run4/guard --n 32 --data_dir ../shared/data/siren --out latency.json   # SirenGuard vs llm-siren's, same guard
# The earlier run (both pooling types searched, code ce499ed/bca7295) is in run2_bca7295/.
