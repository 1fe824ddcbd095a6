# A cold run of 60dab36 on a fresh host of the same kind (AMD EPYC with AVX512-BF16, 2 cores; this one ran the
# bare forward about 1.8x faster than the hosts of ../ and ../repeat_a91cf0c/), alone: the same guard bytes
# (siren.safetensors sha256 24599068...) and F1 as those runs; its time ratios are this host's.
WORK=$WORK/b10 bash scripts/benchmarks/bench_offline_six.sh
