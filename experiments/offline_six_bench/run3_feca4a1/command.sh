# Machine: as ../../../reports/offline_six_bench/command.sh. Code: commit feca4a1 (default pooling mlp_mean, oneDNN cache 128, bf16 head inputs),
# before e839214's memory commit (fold rows in chunks, trim between fits). Its runs.json measured each driver's own peak.
WORK=$WORK/o6run3 bash scripts/benchmarks/bench_offline_six.sh
