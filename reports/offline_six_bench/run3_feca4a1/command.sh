# Machine: as ../command.sh. Code: commit feca4a1 (default pooling mlp_mean, oneDNN cache 128, bf16 head inputs),
# before e839214's memory commit (fold rows in chunks, trim between fits). Its runs.json measured each driver's own peak.
WORK=/work/o6run3 bash scripts/bench_offline_six.sh
