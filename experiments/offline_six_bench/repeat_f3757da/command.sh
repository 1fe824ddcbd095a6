# A second cold run of the same code as ../ (commit f3757da's pipeline; uncommitted at the time: docs, a test, and
# bench_train.py's new variant, none of which the benchmark runs), started right after the first, to see how much this
# host moves the ratios. Same guard bytes (sha256 fd53e815...).
# Not quite alone: a unit test of about 10 s (tests/test_bench_train.py -k cast_paths) ran during the first floor
# timing, which can have lengthened it by as much. The host was in a slower stretch too: the floor took 388.2 s before
# the pipeline and 415.0 s after it (345.9 and 357.6 s in ../), while extraction took 343.6 s (334.6 in ../).
WORK=$WORK/o14bench bash scripts/benchmarks/bench_offline_six.sh
