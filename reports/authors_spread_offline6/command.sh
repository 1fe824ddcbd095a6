# Machine: 2 CPU cores of an AMD EPYC with AVX512-BF16 and no AMX, no GPU (the host of ../offline_six_bench/).
# The authors' code: CSSLab/SIREN at 88d71cbb4dd63cc61b4b6eeefefac38b6149addd (the commit of the protocol's reference run),
# checked out unchanged at AUTHORS. Features: the residual_mean cache of the offline-six bench (WORK=$WORK/b6 bash
# scripts/benchmarks/bench_offline_six.sh trains on mlp_mean; residual_mean's train and validation entries were added by
# `bench_train.py --pooling_type residual_mean`, test's by the siren extract line below), bf16 backbone.
siren extract --model smollm2-135m --data_dir $WORK/b6/data \
  --datasets toxic_chat openai_moderation aegis wildguard safe_rlhf beavertails \
  --splits train validation test --pooling_types residual_mean --dtype bfloat16 --cache_dir $WORK/b6/features
# Their stages 2-3, one torch thread each. Here "none" and reseed 1 ran side by side, then reseed 2 alone, stopped in its
# final fit for time (rerun to the end below, with the same trials' CV F1). Times are not compared; results do not
# depend on what runs beside them:
for r in none 1; do
  extra=""; [ "$r" != none ] && extra="--reseed $r"
  python experiments/authors_spread_offline6/authors_on_cached_features.py --authors_repo AUTHORS --data_dir $WORK/b6/data \
    --cache_dir $WORK/b6/features --threads 1 $extra --out reports/authors_spread_offline6/run_$r.json
done
# Reseeds 2 (again, to the end this time), 3 and 4 side by side, one torch thread each, on 960793a (with our seeds 4-7
# of ../seed_spread_offline6/epyc_one_se/command.sh beside them for the first half hour):
for r in 2 3 4; do
  python experiments/authors_spread_offline6/authors_on_cached_features.py --authors_repo AUTHORS --data_dir $WORK/b6/data \
    --cache_dir $WORK/b6/features --threads 1 --reseed $r --out reports/authors_spread_offline6/run_$r.json &
done; wait
# Reseed 5 alone, two torch threads (the driver's default, as in their reference run):
python experiments/authors_spread_offline6/authors_on_cached_features.py --authors_repo AUTHORS --data_dir $WORK/b6/data \
  --cache_dir $WORK/b6/features --reseed 5 --out reports/authors_spread_offline6/run_5.json
# Both sides' reads as samples (compare.log):
python experiments/authors_spread_offline6/compare.py \
  --ours reports/offline_six_bench/results.json reports/seed_spread_offline6/epyc_one_se/results_seed*.json \
  --theirs reports/authors_spread_offline6/run_*.json
