"""Per-token cost of streaming scores: the incremental session vs rescoring the whole prefix.

The stream is an answer to a prompt (`--prompt`; "" streams a bare text), as a guarded chat runs
it: with an answer head the session computes all three verdicts per feed (the whole text's, the
prompt's, and the answer's, whose rule decides the stop). For each answer length L (answer tokens
already read), the time to take in one more token:
- session: `StreamSession.feed(piece)` where `piece` is the text of the next token (the session
  runs the backbone on the new token, reusing the held-back tail's KV entries);
- rescoring: `guard.score(prompt=, response=prefix)`, a full forward of prompt + the L-token answer
  (the stateless form: what the authors' runtime does after every chunk).
- floor: a bare KV-cached one-token forward of the backbone (all its layers, no LM head, no
  hooks) at the same context length: what a generating LLM pays per token anyway, so the
  session's cost is read as a multiple of it (the target is <= 1.5x near 512 tokens).
Session and floor are timed token by token in alternation (session token i, then floor token i),
so a burst of load on the shared CPU hits both; the ratio is reported as the median of the
per-token ratios, beside the ratio of the medians and of the fastest tokens. Rescoring is timed
once per repetition. The session's verdicts at the last boundary are checked against `score()`'s.

    .venv/bin/python scripts/benchmarks/bench_streaming.py --lengths 32 512 --tokens 8 --reps 5

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
PROMPT = "What happened at this week's town council meeting?"


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


class Floor:
    """A bare KV-cached forward of the backbone, one token at a time: `prefill(ids[:first])`, then
    `step()` runs the next id of `ids` and returns its milliseconds."""

    def __init__(self, guard, ids: list[int], first: int):
        import inspect

        from transformers import DynamicCache

        self.model = guard.extractor.layer_features.model
        params = inspect.signature(self.model.forward).parameters
        self.kwarg = "cache" if "cache" in params else "past_key_values"  # renamed during transformers 5.x
        self.device = next(self.model.parameters()).device
        self.ids, self.i, self.cache = ids, first, DynamicCache()
        with torch.inference_mode():
            self.model(input_ids=torch.tensor([ids[:first]], device=self.device), use_cache=True,
                       **{self.kwarg: self.cache})

    def step(self) -> float:
        i, dev = self.i, self.device
        with torch.inference_mode():
            t = time.perf_counter()
            self.model(input_ids=torch.tensor([[self.ids[i]]], device=dev), position_ids=torch.tensor([[i]], device=dev),
                       use_cache=True, **{self.kwarg: self.cache})
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ms = 1000 * (time.perf_counter() - t)
        self.i += 1
        return ms


def verdict_gap(a, b) -> float:
    """Largest |difference| between two ScoreResults' whole-text, prompt and answer scores."""
    gaps = [abs(a.score - b.score)]
    for key in ("prompt", "response"):
        va, vb = getattr(a, key), getattr(b, key)
        if (va is None) != (vb is None):
            return float("inf")
        if va is not None:
            gaps.append(abs(va.score - vb.score))
    return max(gaps)


def measure(guard, prompt: str | None, pieces: list[str], L: int, tokens: int) -> dict:
    """One repetition at answer length L: per-token session and floor milliseconds (alternating),
    the rescoring's milliseconds, backbone tokens run per feed and the verdicts' gap to score()."""
    from siren.features import join_prompt_response

    session = guard.stream(prompt)
    first = L - tokens
    session.feed("".join(pieces[:first]))
    answer = "".join(pieces[:L])
    ids = list(guard.extractor.layer_features.tokenize([join_prompt_response(prompt, answer)])[0])
    floor = Floor(guard, ids, len(ids) - tokens)
    before, session_ms, floor_ms = session.tokens_run, [], []
    for piece in pieces[first:L]:
        t = time.perf_counter()
        result = session.feed(piece)
        session_ms.append(1000 * (time.perf_counter() - t))
        floor_ms.append(floor.step())
    assert session.n_tokens == len(ids), (session.n_tokens, len(ids))
    t = time.perf_counter()
    full = guard.score(prompt=prompt, response=answer) if prompt else guard.score(answer)
    rescore_ms = 1000 * (time.perf_counter() - t)
    return {"session": session_ms, "floor": floor_ms, "rescore": rescore_ms, "context": len(ids),
            "per_feed": (session.tokens_run - before) / tokens, "gap": verdict_gap(full, result),
            "answer_verdict": result.response is not None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guard", default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 480],
                        help="answer tokens already read (prompt + answer must fit the guard's max_length)")
    parser.add_argument("--prompt", default=PROMPT, help='the prompt the stream answers ("": a bare text)')
    parser.add_argument("--tokens", type=int, default=8, help="timed tokens per repetition and length")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)

    guard, what = demo_guard(args.guard)
    prompt = args.prompt or None
    print(f"[bench_streaming] {what}; layers read up to {max(guard.layers)}, max_length {guard.max_length}; "
          f"torch threads {torch.get_num_threads()}; prompt {prompt!r}", flush=True)
    pieces = token_pieces(guard, " ".join(SENTENCES * 30), max(args.lengths))[1]
    from siren.features import join_prompt_response, tokenize

    longest = tokenize(guard.backbone.tokenizer, [join_prompt_response(prompt, "".join(pieces))], 10 ** 9)[0]
    if len(longest) > guard.max_length:
        raise SystemExit(f"the prompt + {max(args.lengths)} answer tokens make {len(longest)} tokens, more than the "
                         f"guard's max_length {guard.max_length}: give shorter --lengths")
    runs = {L: [] for L in args.lengths}
    for rep in range(args.reps):
        for L in args.lengths:
            runs[L].append(measure(guard, prompt, pieces, L, args.tokens))
        print(f"[bench_streaming] repetition {rep + 1}/{args.reps} done", flush=True)

    rows = []
    verdicts = "whole text, prompt and answer" if runs[args.lengths[0]][0]["answer_verdict"] else "whole text"
    print(f"\nper-token latency ({verdicts} verdicts per feed), {args.reps} repetitions x {args.tokens} timed tokens; "
          "session and floor alternate token by token")
    print("| answer tokens | context tokens | session ms/token | rescoring ms | rescoring / session | floor ms/token "
          "| session / floor (median of per-token ratios) | (ratio of medians) | (fastest vs fastest) "
          "| backbone tokens per feed | max verdict diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for L in args.lengths:
        sess = [x for r in runs[L] for x in r["session"]]
        flo = [x for r in runs[L] for x in r["floor"]]
        s, f = statistics.median(sess), statistics.median(flo)
        r = statistics.median(x["rescore"] for x in runs[L])
        per_token = statistics.median(a / b for a, b in zip(sess, flo))
        row = {"answer_tokens": L, "context_tokens": runs[L][0]["context"], "session_ms_per_token": s,
               "rescoring_ms": r, "ratio": r / s, "floor_ms_per_token": f, "session_over_floor": per_token,
               "session_over_floor_of_medians": s / f, "session_over_floor_fastest": min(sess) / min(flo),
               "backbone_tokens_per_feed": float(np.mean([x["per_feed"] for x in runs[L]])),
               "max_verdict_diff": max(x["gap"] for x in runs[L])}
        rows.append(row)
        print(f"| {L} | {row['context_tokens']} | {s:.1f} | {r:.1f} | {r / s:.1f}x | {f:.1f} | {per_token:.2f}x "
              f"| {s / f:.2f}x | {row['session_over_floor_fastest']:.2f}x | {row['backbone_tokens_per_feed']:.2f} "
              f"| {row['max_verdict_diff']:.1e} |")
    lo, hi = rows[0], rows[-1]
    print(f"\nsession per-token time at {hi['answer_tokens']} vs {lo['answer_tokens']} answer tokens: "
          f"{hi['session_ms_per_token'] / lo['session_ms_per_token']:.2f}x; rescoring: "
          f"{hi['rescoring_ms'] / lo['rescoring_ms']:.2f}x")
    print(f"at {hi['context_tokens']} context tokens: session {hi['session_over_floor']:.2f}x the floor (median of "
          f"per-token ratios; a bare KV-cached one-token forward of the backbone), rescoring / session {hi['ratio']:.1f}x")
    if args.out:
        from siren.fileio import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps({"guard": what, "prompt": prompt, "rows": rows, "reps": args.reps,
                                                      "timed_tokens": args.tokens}, indent=2))
    return 0


if __name__ == "__main__":
    from siren.errors import run_main

    raise SystemExit(run_main(main, "bench_streaming.py"))
