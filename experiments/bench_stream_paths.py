"""Session vs stateless streaming scores of one guard, side by side in one process.

For a seeded sample of streams (SIREN-ready JSONL rows: prompt, response, label), score the
response after every `--every` tokens twice: through the runtime's streaming session and
through the batched stateless path (`siren.evaluation.streaming.score_prefixes`). Prints the
largest score difference and both times. Needs a runtime with a streaming session.

    PYTHONPATH=. .venv/bin/python experiments/bench_stream_paths.py --guard $WORK/guards/smollm2 \
        --data_file ../shared/data/siren/beavertails/test.jsonl --ids_from $WORK/guards/smollm2/splits.json \
        --dataset beavertails --n 4 --every 4 --with_prompt
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from siren.evaluation.streaming import records_from_jsonl, sample, score_prefixes, split_ids
from siren.runtime.guard import SirenGuard


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--guard", required=True)
    p.add_argument("--data_file", required=True)
    p.add_argument("--ids_from", help="splits.json: only the ids it lists for --dataset / --split")
    p.add_argument("--dataset")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=4, help="streams (seeded sample)")
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--with_prompt", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch_tokens", type=int, default=2048)
    args = p.parse_args()

    guard = SirenGuard.from_pretrained(args.guard, device="cpu")
    ids = split_ids(args.ids_from, args.dataset, args.split) if args.ids_from else None
    records = sample(records_from_jsonl(args.data_file, ids=ids), args.n, args.seed)
    seconds, diffs, tokens = {True: 0.0, False: 0.0}, [], 0
    for r in records:
        traces = {}
        for session in (True, False):
            start = time.perf_counter()
            traces[session] = score_prefixes(guard, r.response, r.prompt if args.with_prompt else None,
                                             every=args.every, use_session=session, batch_tokens=args.batch_tokens)
            seconds[session] += time.perf_counter() - start
        assert traces[True].positions.tolist() == traces[False].positions.tolist()
        diffs.append(float(np.abs(traces[True].scores - traces[False].scores).max()))
        tokens += traces[True].n_tokens
    print(f"streams {len(records)}, response tokens {tokens}, every {args.every}: "
          f"max |session - stateless| = {max(diffs):.2e}; session {seconds[True]:.1f} s, "
          f"stateless {seconds[False]:.1f} s, ratio {seconds[False] / seconds[True]:.2f}")


if __name__ == "__main__":
    from siren.errors import run_main

    raise SystemExit(run_main(main, "bench_stream_paths.py"))
