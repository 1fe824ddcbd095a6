"""Per-token cost of streaming scores: the incremental session vs rescoring the whole prefix.

For each prefix length L (tokens already read), the time to take in one more token:
- session: `StreamSession.feed(piece)` where `piece` is the text of the next token (the session
  runs the backbone on the unfinished last word plus the new token, against its KV cache);
- rescoring: `guard.score_streaming(prefix)`, a full forward of the L-token prefix (what the
  authors' runtime does after every chunk).
- floor: a bare KV-cached one-token forward of the backbone (all its layers, no LM head, no
  hooks) at the same prefix length: what a generating LLM pays per token anyway, so the
  session's cost is read as a multiple of it (the target is <= 1.5x near 512 tokens).
All three on the same text, interleaved in every repetition (the CPU is shared, so medians over
repetitions; the ratios are measured side by side). The session's score at the last boundary is
checked against the rescoring's.

    .venv/bin/python scripts/benchmarks/bench_streaming.py --lengths 32 128 512 --tokens 8 --reps 5

Guard: `--guard DIR`; by default the trained smollm2-135m guard of the paper's driver
(train/probes/optuna/smollm2-135m_general/ under the current directory) when there is one, else a random head over smollm2-135m selecting neurons in layers up to the last one (the
backbone cost, which is what is measured, is the same as for a trained guard reading layer 29).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
from guarded_generate import demo_guard  # noqa: E402  (the user script's guard choice, shared)

SENTENCES = [
    "The committee met on Tuesday to review the quarterly budget and the plans for the new library.",
    "Several members asked whether the roof repairs could wait until the spring, when prices are lower.",
    "A local historian gave a short talk about the town's founding families and their old farmhouses.",
    "Volunteers will plant forty trees along the river path next month, weather permitting.",
    "The bakery on Main Street now opens at six, which commuters have welcomed with some enthusiasm.",
    "Students from the high school presented a proposal for a bicycle lane connecting both campuses.",
    "After a long discussion, the council agreed to publish the minutes online within a week.",
]


def token_pieces(guard, text: str, n: int) -> tuple[str, list[str]]:
    """The normalised text and its first n tokens' text pieces (piece i ends where token i ends)."""
    from siren.features import normalize_text

    norm = normalize_text(text)
    enc = guard.backbone.tokenizer(norm, return_offsets_mapping=True, truncation=False)
    ends = [e for _s, e in enc["offset_mapping"]][:n]
    if len(ends) < n:
        raise SystemExit(f"the benchmark text has {len(ends)} tokens, fewer than {n}")
    starts = [0] + ends[:-1]
    return norm, [norm[a:b] for a, b in zip(starts, ends)]


def floor_ms(guard, ids: list[int], first: int) -> list[float]:
    """Milliseconds of each bare KV-cached one-token forward of the backbone, for tokens first..len(ids)-1."""
    import inspect

    from transformers import DynamicCache

    model = guard.extractor.layer_features.model
    params = inspect.signature(model.forward).parameters
    kwarg = "cache" if "cache" in params else "past_key_values"  # renamed during transformers 5.x
    device = next(model.parameters()).device
    cache, times = DynamicCache(), []
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids[:first]], device=device), use_cache=True, **{kwarg: cache})
        for i in range(first, len(ids)):
            t = time.perf_counter()
            model(input_ids=torch.tensor([[ids[i]]], device=device), position_ids=torch.tensor([[i]], device=device),
                  use_cache=True, **{kwarg: cache})
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - t))
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guard", default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--tokens", type=int, default=8, help="timed tokens per repetition and length")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)

    guard, what = demo_guard(args.guard)
    print(f"[bench_streaming] {what}; layers read up to {max(guard.layers)}, max_length {guard.max_length}; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    if max(args.lengths) > guard.max_length:
        raise SystemExit(f"lengths must be <= the guard's max_length {guard.max_length}")
    text = " ".join(SENTENCES * 30)
    norm, pieces = token_pieces(guard, text, max(args.lengths))

    session_ms = {L: [] for L in args.lengths}
    rescore_ms = {L: [] for L in args.lengths}
    bare_ms = {L: [] for L in args.lengths}
    # Fastest single token over all repetitions: on a shared CPU, waiting for a core only ever adds
    # time, so the ratio of the minima is the steadier estimate of the intrinsic cost.
    best = {L: {"session": float("inf"), "floor": float("inf")} for L in args.lengths}
    run_per_feed = {L: [] for L in args.lengths}
    diffs = {L: 0.0 for L in args.lengths}
    for rep in range(args.reps):
        for L in args.lengths:
            # Session: read the first L - tokens tokens (untimed), then time the next `tokens` feeds.
            session = guard.stream()
            first = L - args.tokens
            session.feed("".join(pieces[:first]))
            before = session.tokens_run
            times = []
            for piece in pieces[first:L]:
                t = time.perf_counter()
                result = session.feed(piece)
                times.append(time.perf_counter() - t)
            run_per_feed[L].append((session.tokens_run - before) / args.tokens)
            session_ms[L].append(1000 * statistics.median(times))
            best[L]["session"] = min(best[L]["session"], 1000 * min(times))
            # Rescoring: one full forward of the L-token prefix per new token.
            t = time.perf_counter()
            full = guard.score_streaming("".join(pieces[:L]))
            rescore_ms[L].append(1000 * (time.perf_counter() - t))
            diffs[L] = max(diffs[L], abs(full.score - result.score))
            ids = list(guard.extractor.layer_features.tokenize(["".join(pieces[:L])])[0])
            assert session.n_tokens == len(ids)
            # Floor: the same last `tokens` tokens, one bare cached forward each.
            floor = floor_ms(guard, ids, len(ids) - args.tokens)
            bare_ms[L].append(statistics.median(floor))
            best[L]["floor"] = min(best[L]["floor"], min(floor))
        print(f"[bench_streaming] repetition {rep + 1}/{args.reps} done", flush=True)

    rows = []
    print(f"\nper-token latency, medians over {args.reps} repetitions ({args.tokens} timed tokens each for the session)")
    print("| prefix tokens | session ms/token | rescoring ms/token | ratio | floor ms/token | session / floor "
          "| backbone tokens per feed | max |score diff| |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for L in args.lengths:
        s, r, f = (statistics.median(x[L]) for x in (session_ms, rescore_ms, bare_ms))
        rows.append({"prefix_tokens": L, "session_ms_per_token": s, "rescoring_ms_per_token": r, "ratio": r / s,
                     "floor_ms_per_token": f, "session_over_floor": s / f,
                     "session_over_floor_fastest": best[L]["session"] / best[L]["floor"],
                     "backbone_tokens_per_feed": float(np.mean(run_per_feed[L])), "max_score_diff": diffs[L]})
        print(f"| {L} | {s:.1f} | {r:.1f} | {r / s:.1f}x | {f:.1f} | {s / f:.2f}x | {np.mean(run_per_feed[L]):.2f} "
              f"| {diffs[L]:.1e} |")
    lo, hi = rows[0], rows[-1]
    print(f"\nsession per-token time at {hi['prefix_tokens']} vs {lo['prefix_tokens']} tokens: "
          f"{hi['session_ms_per_token'] / lo['session_ms_per_token']:.2f}x; rescoring: "
          f"{hi['rescoring_ms_per_token'] / lo['rescoring_ms_per_token']:.2f}x")
    print(f"at {hi['prefix_tokens']} tokens: session {hi['session_over_floor']:.2f}x the floor (a bare KV-cached "
          f"one-token forward of the backbone; fastest token vs fastest token: "
          f"{hi['session_over_floor_fastest']:.2f}x), rescoring / session {hi['ratio']:.1f}x")
    if args.out:
        from siren.fileio import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps({"guard": what, "rows": rows, "reps": args.reps,
                                                      "timed_tokens": args.tokens}, indent=2))
    return 0


if __name__ == "__main__":
    from siren.errors import run_main

    raise SystemExit(run_main(main, "bench_streaming.py"))
