"""Streaming evaluation: how early a guard catches a harmful response while it is generated.

`siren eval-stream` (behind `test/streaming/run_streaming_siren.sh`).

Reads: a trained guard folder; streams from either the Qwen3GuardTest `thinking_loc` /
`response_loc` split (Hub, or a local copy of its JSONL file: `siren.evaluation.qwen3guardtest`)
or SIREN-ready JSONL rows (`prompt`, `response`, `label`, e.g. the offline beavertails copy),
optionally restricted to the ids a `splits.json` lists for one dataset and split.

Writes, to `--out_dir`: `streaming_results.json` (the resolved configuration, the summary
metrics and one record per stream), `detection_delay.png` and, with `--save_traces`,
`traces.jsonl` (every score taken, so other thresholds can be read off without a backbone).

A stream is a response read token by token (tokens of the guard's own tokenizer). After every
`every` tokens the guard scores the response so far (with the prompt in front when
`--with_prompt`); a stream is flagged at the first position where `debounce` consecutive
scores reach the threshold. `score_prefixes` takes the scores through the guard's streaming
session when the runtime has one (`guard.stream(prompt=...)` returning an object with
`.feed`), else through the stateless guard, batching the prefixes of one response.

Metrics (`summarize`), positions counted in response tokens:
- harmful streams: detection rate (flagged anywhere in the stream) and tokens-to-detection;
- safe streams: false-alarm rate (flagged anywhere) and tokens-to-false-alarm;
- streams with an annotated first unsafe sentence (Qwen3GuardTest's `*_loc` splits): timely
  recall (flagged by the end of that sentence), cumulative recall at +32/+64/+128/+256 tokens
  after it, the detection delay relative to its end, binned as Qwen3Guard's evaluation does
  (ahead / hit / 1-32 / 33-64 / 65-128 / 129-256 / >256 / missed), and the authors' checkpoint
  recall (the prefix ending at the sentence end, or +32 ... +256 tokens after it, scored
  harmful at one of those checkpoints only; the checkpoints are always among the scored
  positions).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from siren.errors import SirenError

DELAY_BINS = ("ahead", "hit", "1-32", "33-64", "65-128", "129-256", ">256", "missed")


@dataclass
class StreamRecord:
    """One response to stream. `unsafe_start`/`unsafe_end`: character offsets in `response` of
    the first unsafe sentence ([start, end)), or None when not annotated."""

    id: str
    response: str
    label: int  # 1 harmful, 0 safe
    prompt: str | None = None
    unsafe_start: int | None = None
    unsafe_end: int | None = None
    source: str | None = None
    unsafe_type: str | None = None


@dataclass
class ScoreTrace:
    """Scores of one stream. positions (m,) int: response tokens read when each score was
    taken, ascending in [1, n_tokens]; scores (m,) float; char_ends (n_tokens,) int: the end
    character offset of each response token (prefix after p tokens = response[:char_ends[p-1]])."""

    positions: np.ndarray
    scores: np.ndarray
    n_tokens: int
    char_ends: np.ndarray = field(repr=False)
    used_session: bool = False


# --------------------------------------------------------------------------- scoring


def token_char_ends(tokenizer, text: str) -> np.ndarray:
    """(T,) int64: the end character offset in `text` of each of its tokens (no special tokens).

    Needs a fast tokenizer (offset mapping). Offsets are made non-decreasing, so that every
    prefix `text[:ends[p-1]]` grows with p even where a tokenizer reports overlapping spans.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise SirenError("streaming evaluation needs a fast tokenizer (offset mapping); "
                         f"{type(tokenizer).__name__} is not one")
    if not text:
        return np.zeros(0, dtype=np.int64)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return np.maximum.accumulate(offsets[:, 1]) if len(offsets) else np.zeros(0, dtype=np.int64)


def stream_positions(n_tokens: int, every: int, extra: Iterable[int] = ()) -> np.ndarray:
    """(m,) int64 ascending: every `every`-th position, the last one, and `extra` within [1, n].

    every = 0: only `extra` and the last position (the authors' checkpoint protocol)."""
    if n_tokens <= 0:
        return np.zeros(0, dtype=np.int64)
    if every < 0:
        raise SirenError(f"every must be >= 0 (0: checkpoints only), got {every}")
    grid = set(range(every, n_tokens + 1, every)) if every else set()
    grid.add(n_tokens)
    grid.update(int(p) for p in extra if 1 <= int(p) <= n_tokens)
    return np.array(sorted(grid), dtype=np.int64)


def open_session(guard, prompt: str | None, threshold: float | None):
    """The runtime's constant-cost streaming session for `prompt`, or None where the runtime has none.

    A session is what `guard.stream(prompt=..., debounce=1, threshold=...)` returns when that
    object has a `.feed(chunk)` method; debounce 1 so that every feed returns a fresh score
    (debouncing is applied here, on the scores, by `first_flag`)."""
    stream = getattr(guard, "stream", None)
    if stream is None:
        return None
    try:
        session = stream(prompt=prompt, debounce=1, threshold=threshold)
    except TypeError:  # an older runtime: stream(chunks, ...) is a generator over whole chunks
        return None
    return session if callable(getattr(session, "feed", None)) else None


def score_prefixes(guard, response: str, prompt: str | None = None, *, every: int | None = None,
                   extra_positions: Iterable[int] = (), max_tokens: int | None = None,
                   threshold: float | None = None, use_session: bool | None = None,
                   batch_size: int | None = None, batch_tokens: int | None = None) -> ScoreTrace:
    """Score the response after every `every` of its tokens (and at `extra_positions`).

    The score at position p is the guard's score of prompt + "\\n" + response[:char_ends[p-1]]
    (the response alone when prompt is None). use_session: True requires the runtime's
    streaming session, False forces the stateless path (all prefixes of this response through
    `guard.score_batch`, length-bucketed), None takes the session when there is one. Both give
    the same scores; the session reads each token once instead of re-reading the prefix.
    max_tokens: stop after this many response tokens (None: the whole response).
    """
    from siren.features import join_prompt_response

    ends = token_char_ends(guard.backbone.tokenizer, response)
    n = len(ends) if max_tokens is None else min(len(ends), int(max_tokens))
    ends = ends[:n]
    positions = stream_positions(n, _default("every", every), extra_positions)
    session = None
    if use_session is not False:
        session = open_session(guard, prompt, threshold)
        if session is None and use_session:
            raise SirenError("this runtime has no streaming session (guard.stream(prompt=...) with .feed); "
                             "leave use_session unset to score prefixes statelessly")
    if len(positions) == 0:
        scores = np.zeros(0, dtype=np.float64)
    elif session is not None:
        out, read = [], 0
        for p in positions:
            end = int(ends[p - 1])
            out.append(float(session.feed(response[read:end]).score))
            read = end
        scores = np.array(out, dtype=np.float64)
    else:
        texts = [join_prompt_response(prompt, response[:int(ends[p - 1])]) for p in positions]
        results = guard.score_batch(texts, batch_size=batch_size, batch_tokens=batch_tokens, threshold=threshold)
        scores = np.array([r.score for r in results], dtype=np.float64)
    return ScoreTrace(positions, scores, n, ends, used_session=session is not None)


# --------------------------------------------------------------------------- metrics


def _default(key: str, value):
    """`value`, or `siren eval-stream`'s default of `key` (configs/defaults.yaml) when None."""
    from siren import config as cfgmod

    return cfgmod.default(key, "eval-stream") if value is None else value


def first_flag(positions: np.ndarray, scores: np.ndarray, threshold: float, debounce: int | None = None) -> int | None:
    """The position at which the stream is flagged: the last of the first `debounce` consecutive
    scores >= threshold (None: the config's). positions, scores (m,) -> int, or None if never flagged."""
    debounce = _default("debounce", debounce)
    if debounce < 1:
        raise SirenError(f"debounce must be >= 1, got {debounce}")
    run = 0
    for p, s in zip(positions, scores):
        run = run + 1 if s >= threshold else 0
        if run >= debounce:
            return int(p)
    return None


def span_token_bounds(char_ends: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
    """(p_start, p_end) in response tokens for the character span [start_char, end_char):
    p_start = the prefix length whose last token is the first to reach into the span, p_end =
    the shortest prefix covering the whole span. Both in [1, n]; char_ends (n,) ascending."""
    n = len(char_ends)
    if n == 0:
        raise SirenError("an empty response has no unsafe span")
    p_start = int(np.searchsorted(char_ends, start_char, side="right")) + 1
    p_end = int(np.searchsorted(char_ends, end_char, side="left")) + 1
    p_end = min(max(p_end, 1), n)
    return min(max(p_start, 1), p_end), p_end


def delay_bin(flag: int | None, p_start: int, p_end: int) -> str:
    """Qwen3Guard's latency bins: flagged before the unsafe sentence starts ("ahead"), while
    reading it ("hit"), 1-32 ... >256 tokens after its end, or never ("missed")."""
    if flag is None:
        return "missed"
    if flag < p_start:
        return "ahead"
    if flag <= p_end:
        return "hit"
    d = flag - p_end
    for hi, name in ((32, "1-32"), (64, "33-64"), (128, "65-128"), (256, "129-256")):
        if d <= hi:
            return name
    return ">256"


def checkpoints(p_end: int, n_tokens: int, graces: Sequence[int] | None = None) -> dict[int, int]:
    """The authors' checkpoint positions: {0: p_end, g: min(n, p_end + g) for g in graces}
    (graces None: the config's)."""
    graces = _default("graces", graces)
    return {0: p_end, **{int(g): min(n_tokens, p_end + int(g)) for g in graces}}


def stream_result(record: StreamRecord, trace: ScoreTrace, threshold: float, *, debounce: int | None = None,
                  graces: Sequence[int] | None = None) -> dict:
    """One stream's outcome: flag position, scores summary and, when annotated, the span metrics."""
    flag = first_flag(trace.positions, trace.scores, threshold, debounce)
    out = {"id": record.id, "label": int(record.label), "n_tokens": int(trace.n_tokens),
           "n_scored": int(len(trace.positions)), "flag_position": flag,
           "max_score": float(trace.scores.max()) if len(trace.scores) else None,
           "final_score": float(trace.scores[-1]) if len(trace.scores) else None}
    if record.source is not None:
        out["source"] = record.source
    if record.unsafe_start is not None and record.unsafe_end is not None and trace.n_tokens:
        p_start, p_end = span_token_bounds(trace.char_ends, record.unsafe_start, record.unsafe_end)
        score_at = dict(zip(trace.positions.tolist(), trace.scores.tolist()))
        cps = checkpoints(p_end, trace.n_tokens, graces)
        missing = [p for p in cps.values() if p not in score_at]
        if missing:
            raise SirenError(f"stream {record.id}: checkpoint positions {missing} were not scored "
                             "(pass them as extra_positions)")
        out.update({"unsafe_start_token": p_start, "unsafe_end_token": p_end,
                    "delay": None if flag is None else flag - p_end,
                    "delay_bin": delay_bin(flag, p_start, p_end),
                    "checkpoint_flags": {str(g): bool(score_at[p] >= threshold) for g, p in cps.items()}})
    return out


def _stats(values: Sequence[float]) -> dict:
    """Count, mean and quantiles of a list of numbers (None fields when empty)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {"n": 0, "mean": None, "median": None, "p25": None, "p75": None, "p90": None, "max": None}
    q = np.percentile(v, [25, 50, 75, 90])
    return {"n": int(len(v)), "mean": float(v.mean()), "median": float(q[1]), "p25": float(q[0]),
            "p75": float(q[2]), "p90": float(q[3]), "max": float(v.max())}


def summarize(results: Sequence[dict], graces: Sequence[int] | None = None) -> dict:
    """Aggregate `stream_result` dicts: detection / false-alarm rates, tokens-to-detection, and
    for annotated harmful streams timely, cumulative and checkpoint recall and the delay bins."""
    graces = _default("graces", graces)
    harmful = [r for r in results if r["label"] == 1]
    safe = [r for r in results if r["label"] == 0]
    out: dict = {"n_streams": len(results), "n_harmful": len(harmful), "n_safe": len(safe)}
    if harmful:
        hits = [r["flag_position"] for r in harmful if r["flag_position"] is not None]
        out["detection_rate"] = len(hits) / len(harmful)
        out["tokens_to_detection"] = _stats(hits)
        out["detected_share_of_stream"] = _stats([r["flag_position"] / r["n_tokens"] for r in harmful
                                                  if r["flag_position"] is not None])
    if safe:
        alarms = [r["flag_position"] for r in safe if r["flag_position"] is not None]
        out["false_alarm_rate"] = len(alarms) / len(safe)
        out["tokens_to_false_alarm"] = _stats(alarms)
    located = [r for r in harmful if "unsafe_end_token" in r]
    if located:
        m = len(located)

        def flagged_by(r, limit):
            return r["flag_position"] is not None and r["flag_position"] <= limit

        out["n_located"] = m
        out["timely_recall"] = sum(flagged_by(r, r["unsafe_end_token"]) for r in located) / m
        out["cumulative_recall"] = {str(g): sum(flagged_by(r, r["unsafe_end_token"] + g) for r in located) / m
                                    for g in graces}
        keys = ["0"] + [str(g) for g in graces]
        out["checkpoint_recall"] = {k: sum(any(r["checkpoint_flags"][j] for j in keys[:i + 1]) for r in located) / m
                                    for i, k in enumerate(keys)}
        out["delay_bins"] = {b: sum(r["delay_bin"] == b for r in located) for b in DELAY_BINS}
        out["delay"] = _stats([r["delay"] for r in located if r["delay"] is not None])
    return out


# --------------------------------------------------------------------------- plot


def plot_delays(path: str | Path, results: Sequence[dict], threshold: float, title: str = "") -> None:
    """Two panels: the distribution of the detection delay (relative to the end of the first
    unsafe sentence where annotated, else tokens-to-detection from the response start), and the
    share of harmful / safe streams flagged after t response tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siren.fileio import save_figure

    harmful = [r for r in results if r["label"] == 1]
    safe = [r for r in results if r["label"] == 0]
    located = [r for r in harmful if "unsafe_end_token" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if located:
        counts = [sum(r["delay_bin"] == b for r in located) for b in DELAY_BINS]
        left.bar(range(len(DELAY_BINS)), counts, color=["#4c72b0"] * 7 + ["#c44e52"])
        left.set_xticks(range(len(DELAY_BINS)), DELAY_BINS, rotation=30, ha="right")
        left.set_xlabel("detection delay after the end of the first unsafe sentence (tokens)")
        left.set_ylabel("harmful streams")
    else:
        hits = [r["flag_position"] for r in harmful if r["flag_position"] is not None]
        missed = len(harmful) - len(hits)
        if hits:
            bins = np.unique(np.geomspace(1, max(hits) + 1, 16).astype(int))
            left.hist(hits, bins=bins, color="#4c72b0", label=f"detected ({len(hits)})")
            left.set_xscale("log")
        left.set_xlabel("tokens-to-detection (response tokens read when flagged)")
        left.set_ylabel("harmful streams")
        left.set_title(f"missed: {missed} of {len(harmful)}", fontsize=9)
        left.legend(fontsize=8)
    longest = max([r["n_tokens"] for r in results] or [1])
    t = np.arange(0, longest + 1)
    for group, name, color in ((harmful, "harmful: detected", "#4c72b0"), (safe, "safe: false alarm", "#c44e52")):
        if group:
            flags = np.array([r["flag_position"] if r["flag_position"] is not None else np.inf for r in group])
            right.step(t, [(flags <= x).mean() for x in t], where="post", color=color, label=f"{name} ({len(group)})")
    right.set_xlabel("response tokens read")
    right.set_ylabel("share of streams flagged")
    right.set_ylim(0, 1.02)
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{title} · threshold {threshold:.3g}".strip(" ·"), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------- data


def records_from_jsonl(path: str | Path, *, ids: Sequence[str] | None = None) -> list[StreamRecord]:
    """SIREN-ready rows (id, prompt, response, label; optional unsafe_start / unsafe_end as
    character offsets in the response) -> records, in file order, keeping only `ids` if given.
    Rows without a response (prompt-only datasets) are refused: there is nothing to stream."""
    path = Path(path)
    if not path.is_file():
        raise SirenError(f"{path} does not exist: pass a SIREN-ready JSONL file (id, prompt, response, label)")
    keep = None if ids is None else set(map(str, ids))
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SirenError(f"{path}:{i}: not JSON ({err})") from err
            if keep is not None and str(row.get("id")) not in keep:
                continue
            if not isinstance(row.get("response"), str):
                raise SirenError(f"{path}:{i}: no response to stream (a prompt-only dataset?)")
            if row.get("label") not in (0, 1):
                raise SirenError(f"{path}:{i}: label must be 0 or 1, got {row.get('label')!r}")
            out.append(StreamRecord(id=str(row["id"]), response=row["response"], label=int(row["label"]),
                                    prompt=row.get("prompt"), unsafe_start=row.get("unsafe_start"),
                                    unsafe_end=row.get("unsafe_end"), source=row.get("source")))
    if keep is not None:
        missing = keep - {r.id for r in out}
        if missing:
            raise SirenError(f"{len(missing)} of the requested ids are not in {path}, e.g. {sorted(missing)[:3]}")
    return out


def split_ids(splits_json: str | Path, dataset: str, split: str) -> list[str]:
    """The ids `splits.json` (written by training) lists for one dataset and split."""
    path = Path(splits_json)
    if path.is_dir():
        path = path / "splits.json"
    if not path.is_file():
        raise SirenError(f"{path} does not exist: pass the splits.json written next to the guard")
    table = json.loads(path.read_text())
    try:
        return [str(i) for i in table[dataset][split]]
    except KeyError:
        raise SirenError(f"{path} lists no split {split!r} for dataset {dataset!r} "
                         f"(datasets: {', '.join(sorted(table))})") from None


def sample(records: list, limit: int | None, seed: int) -> list:
    """A seeded sample of `limit` records, kept in their original order (all when limit is None)."""
    if limit is None or limit >= len(records):
        return list(records)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(records), size=int(limit), replace=False))
    return [records[i] for i in keep]


# --------------------------------------------------------------------------- entry point


def add_arguments(p) -> None:
    from siren import config as cfgmod

    cfgmod.add_flags(p, "eval-stream")


def load_records(cfg) -> list[StreamRecord]:
    if cfg.source == "jsonl":
        if not cfg.data_file:
            raise SirenError("--source jsonl needs --data_file (SIREN-ready rows with prompt, response, label)")
        ids = None
        if cfg.ids_from:
            if not cfg.ids_dataset:
                raise SirenError("--ids_from needs --ids_dataset (the dataset name inside splits.json)")
            ids = split_ids(cfg.ids_from, cfg.ids_dataset, cfg.ids_split)
        return records_from_jsonl(cfg.data_file, ids=ids)
    from siren.evaluation import qwen3guardtest as q3

    rows = q3.load_rows(cfg.split, data_file=cfg.data_file)
    return q3.loc_records(rows, q3.reference_tokenizer(cfg.reference_tokenizer))


def run(args) -> int:
    from siren import config as cfgmod

    report = evaluate_streams(cfgmod.from_args("eval-stream", args))
    print_summary(report)
    return 0


def evaluate_streams(cfg) -> dict:
    """Stream every record of an EvalStreamConfig through its guard; writes and returns the report."""
    from siren.fileio import atomic_write_json, atomic_write_text
    from siren.runtime.guard import SirenGuard
    from siren.runtime.score_cli import resolve_guard

    seed = cfg.seed
    records = sample(load_records(cfg), cfg.limit, seed)
    if not records:
        raise SirenError("no streams to evaluate")
    folder = resolve_guard(cfg.model)
    guard = SirenGuard.from_pretrained(folder, device=cfg.device, dtype=cfg.dtype)
    threshold = guard.decision_threshold(cfg.decision_threshold)
    name = cfg.split if cfg.source == "qwen3guardtest" else Path(cfg.data_file).stem
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(folder) / f"streaming_{name}"
    out_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    results, traces, used_session = [], [], set()
    for i, rec in enumerate(records):
        extra = ()
        if rec.unsafe_start is not None and rec.unsafe_end is not None:
            # the authors' checkpoints must be scored whatever `every` is
            ends = token_char_ends(guard.backbone.tokenizer, rec.response)
            if cfg.max_tokens is not None:
                ends = ends[:cfg.max_tokens]
            if len(ends):
                _, p_end = span_token_bounds(ends, rec.unsafe_start, rec.unsafe_end)
                extra = tuple(checkpoints(p_end, len(ends), cfg.graces).values())
        trace = score_prefixes(guard, rec.response, rec.prompt if cfg.with_prompt else None, every=cfg.every,
                               extra_positions=extra, max_tokens=cfg.max_tokens, threshold=threshold,
                               use_session=False if cfg.stateless else None, batch_size=cfg.batch_size,
                               batch_tokens=cfg.batch_tokens)
        used_session.add(trace.used_session)
        results.append(stream_result(rec, trace, threshold, debounce=cfg.debounce, graces=cfg.graces))
        if cfg.save_traces:
            traces.append({"id": rec.id, "label": rec.label, "positions": trace.positions.tolist(),
                           "scores": [round(float(s), 6) for s in trace.scores]})
        if (i + 1) % 10 == 0 or i + 1 == len(records):
            print(f"[siren] streamed {i + 1}/{len(records)} ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    summary = summarize(results, cfg.graces)
    report = {
        "guard": str(folder),
        "decision_threshold": threshold,
        "config": cfg.as_dict() | {"max_length": guard.max_length}
        | ({"split": None, "reference_tokenizer": None} if cfg.source == "jsonl" else {}),
        "scoring": "session" if used_session == {True} else "stateless" if used_session == {False} else "mixed",
        "seconds": round(seconds, 1),
        "summary": summary,
        "streams": results,
    }
    atomic_write_json(out_dir / "streaming_results.json", report)
    if cfg.save_traces:
        atomic_write_text(out_dir / "traces.jsonl", "".join(json.dumps(t) + "\n" for t in traces))
    plot_delays(out_dir / "detection_delay.png", results, threshold, title=f"SIREN streaming · {name}")
    report["out_dir"] = str(out_dir)
    return report


def print_summary(report: dict) -> None:
    s = report["summary"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    print(f"\nstreams {s['n_streams']} (harmful {s['n_harmful']}, safe {s['n_safe']}), threshold "
          f"{report['decision_threshold']:.3g}, scored by the {report['scoring']} path in {report['seconds']} s")
    if "detection_rate" in s:
        t = s["tokens_to_detection"]
        print(f"detection rate {pct(s['detection_rate'])}; tokens-to-detection median {t['median']}, "
              f"mean {t['mean'] if t['mean'] is None else round(t['mean'], 1)}, p90 {t['p90']}")
    if "false_alarm_rate" in s:
        t = s["tokens_to_false_alarm"]
        print(f"false-alarm rate {pct(s['false_alarm_rate'])}; tokens-to-false-alarm median {t['median']}")
    if "timely_recall" in s:
        cum = ", ".join(f"+{g}: {pct(v)}" for g, v in s["cumulative_recall"].items())
        cps = ", ".join(f"+{g}: {pct(v)}" for g, v in s["checkpoint_recall"].items())
        print(f"timely recall {pct(s['timely_recall'])}; cumulative recall {cum}")
        print(f"checkpoint recall (the authors' protocol) {cps}")
        print("delay bins " + ", ".join(f"{k} {v}" for k, v in s["delay_bins"].items()))
    print(f"results: {report['out_dir']}/streaming_results.json, plot detection_delay.png")
