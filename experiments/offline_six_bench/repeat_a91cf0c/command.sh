# A cold run of main's final commit of the session (a91cf0c), alone on this host (AMD EPYC with AVX512-BF16, 2 cores),
# to check that the pipeline changes since 67a668b's cold run (../: the probes' shared path solver, docs, report
# scripts) left it as it was: the same guard bytes (siren.safetensors sha256 24599068...), the same F1.
WORK=$WORK/b9 bash scripts/benchmarks/bench_offline_six.sh
