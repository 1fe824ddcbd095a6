"""Streaming evaluation: how early a guard catches a harmful response while it is generated.

`siren eval-stream` (behind `test/streaming/run_streaming_siren.sh`).

Reads: a trained guard folder; streams from either the Qwen3GuardTest `thinking_loc` /
`response_loc` split (Hub, or a local copy of its JSONL file: `siren.evaluation.qwen3guardtest`)
or SIREN-ready JSONL rows (`prompt`, `response`, `label`, e.g. the offline beavertails copy),
optionally restricted to the ids a `splits.json` lists for one dataset and split.

Writes, to `--out_dir`: `streaming_results.json` (the resolved configuration and rule, the
summary metrics, the threshold trade-off curve and one record per stream),
`detection_delay.png`, `tradeoff.png` and, with `--save_traces`, `traces.jsonl` (every score
taken, so other rules can be read off without a backbone).

A stream is a response read token by token (tokens of the guard's own tokenizer). After every
`every` tokens the guard scores the response so far: with an answer head, the answer's verdict
(`--verdict response`: the answer's tokens pooled with the prompt in context), else the whole
text's score (the response alone, or prompt + newline + response with `--with_prompt`).
A `StreamRule` (decision threshold, k-consecutive debounce, minimum answer tokens, optional EMA;
`siren.runtime.stream_rules`) decides where a stream is flagged; what the config leaves null
(`debounce`, `min_answer_tokens`, `ema` of section eval_stream) comes from the guard's own stream
rule, else from configs/defaults.yaml's top level. `--target_false_alarm` picks
the threshold on safe validation streams (`--val_data_file` / `--val_ids_split`), never on the
evaluated ones. `score_prefixes` takes the scores through the guard's streaming session when
the runtime has one (`guard.stream(prompt=...)` returning an object with `.feed`), else
through the stateless guard, batching the prefixes of one response.

Metrics and plots: `siren.evaluation.stream_metrics` (detection, false alarms, the streaming
tax, tokens-to-detection, the authors' timely / cumulative / checkpoint recall, Qwen3Guard's
localisation hits, the trade-off curve).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from siren.errors import SirenError
from siren.evaluation.eval_checks import check_row_id, check_stream_args, check_text_field
from siren.evaluation.stream_metrics import (DELAY_BINS, checkpoints, delay_bin,  # noqa: F401 (re-exported)
                                            first_flag, plot_delays, plot_tradeoff, rule_dict, span_token_bounds,
                                            stream_result, summarize, tradeoff_curve)
from siren.runtime.stream_rules import StreamRule, threshold_for_false_alarm


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

    A session is what `guard.stream(prompt=...)` returns when that object has a `.feed(chunk)`
    method, opened so that it never stops on its own (rule / debounce 1: every feed returns a
    fresh score; the rule is applied here, on the scores, by `stream_result`)."""
    import inspect

    stream = getattr(guard, "stream", None)
    if stream is None:
        return None
    try:
        params = inspect.signature(stream).parameters
    except (TypeError, ValueError):
        params = {}
    try:
        if "rule" in params:  # the runtime with answer verdicts: stream(prompt, *, rule=StreamRule)
            thr = guard.default_threshold if threshold is None else threshold
            session = stream(prompt=prompt, rule=StreamRule(float(thr), 1, 0, None))
        else:
            session = stream(prompt=prompt, debounce=1, threshold=threshold)
    except TypeError:  # an older runtime: stream(chunks, ...) is a generator over whole chunks
        return None
    return session if callable(getattr(session, "feed", None)) else None


def verdict_score(result, verdict: str) -> float:
    """The score a stream is judged on: the answer's verdict ("response"; NaN when the answer
    pool is empty, e.g. truncated away) or the whole text's ("text")."""
    if verdict == "response":
        return float("nan") if result.response is None else float(result.response.score)
    return float(result.score)


def _default(key: str, value):
    """`value`, or `siren eval-stream`'s default of `key` (configs/defaults.yaml) when None."""
    from siren import config as cfgmod

    return cfgmod.default(key, "eval-stream") if value is None else value


def score_prefixes(guard, response: str, prompt: str | None = None, *, every: int | None = None,
                   extra_positions: Iterable[int] = (), max_tokens: int | None = None,
                   threshold: float | None = None, use_session: bool | None = None,
                   batch_size: int | None = None, batch_tokens: int | None = None,
                   verdict: str | None = None) -> ScoreTrace:
    """Score the response after every `every` of its tokens (and at `extra_positions`).

    The score at position p is the guard's score of prompt + "\\n" + response[:char_ends[p-1]]
    (the response alone when prompt is None). use_session: True requires the runtime's
    streaming session, False forces the stateless path (all prefixes of this response through
    `guard.score_batch`, length-bucketed), None takes the session when there is one. Both give
    the same scores; the session reads each token once instead of re-reading the prefix.
    max_tokens: stop after this many response tokens (None: the whole response).
    verdict: "text" scores the whole text as above; "response" the answer's verdict (the guard's
    answer head on the answer's tokens, with the prompt in context: `session.feed(...).response`,
    or `guard.score_pairs` statelessly); "auto": response when the guard has an answer head, else
    text. every / verdict None: `siren eval-stream`'s defaults (configs/defaults.yaml);
    batch_size / batch_tokens None: the guard's (no cap; padded tokens by device).
    """
    from siren.features import join_prompt_response

    ends = token_char_ends(guard.backbone.tokenizer, response)
    n = len(ends) if max_tokens is None else min(len(ends), int(max_tokens))
    ends = ends[:n]
    positions = stream_positions(n, _default("every", every), extra_positions)
    verdict = _default("verdict", verdict)
    if verdict == "auto":
        verdict = "response" if getattr(guard, "has_answer_head", False) else "text"
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
            out.append(verdict_score(session.feed(response[read:end]), verdict))
            read = end
        scores = np.array(out, dtype=np.float64)
    elif verdict == "response":
        pairs = [(prompt, response[:int(ends[p - 1])]) for p in positions]
        results = guard.score_pairs(pairs, batch_size=batch_size, batch_tokens=batch_tokens, threshold=threshold)
        scores = np.array([verdict_score(r, verdict) for r in results], dtype=np.float64)
    else:
        texts = [join_prompt_response(prompt, response[:int(ends[p - 1])]) for p in positions]
        results = guard.score_batch(texts, batch_size=batch_size, batch_tokens=batch_tokens, threshold=threshold)
        scores = np.array([r.score for r in results], dtype=np.float64)
    return ScoreTrace(positions, scores, n, ends, used_session=session is not None)


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
            if not isinstance(row, dict):
                raise SirenError(f"{path}:{i}: a row must be a JSON object, got {type(row).__name__}")
            row_id = check_row_id(row, f"{path}:{i}")
            if keep is not None and row_id not in keep:
                continue
            if row.get("response") is None:
                raise SirenError(f"{path}:{i}: no response to stream (a prompt-only dataset?)")
            check_text_field(row["response"], "response", f"{path}:{i}")
            check_text_field(row.get("prompt"), "prompt", f"{path}:{i}", nullable=True)
            if row.get("label") not in (0, 1) or isinstance(row.get("label"), bool):
                raise SirenError(f"{path}:{i}: label must be 0 or 1, got {row.get('label')!r}")
            out.append(StreamRecord(id=row_id, response=row["response"], label=int(row["label"]),
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
        return records_from_jsonl(cfg.data_file, ids=_ids(cfg, cfg.ids_split))
    from siren.evaluation import qwen3guardtest as q3

    rows = q3.load_rows(cfg.split, data_file=cfg.data_file)
    return q3.loc_records(rows, q3.reference_tokenizer(cfg.reference_tokenizer))


def _ids(cfg, split: str) -> list[str] | None:
    if not cfg.ids_from:
        return None
    if not cfg.ids_dataset:
        raise SirenError("--ids_from needs --ids_dataset (the dataset name inside splits.json)")
    return split_ids(cfg.ids_from, cfg.ids_dataset, split)


def validation_records(cfg, test_ids: set[str]) -> list[StreamRecord]:
    """The safe validation streams a target false-alarm rate is met on (never the evaluated ones)."""
    if not (cfg.val_data_file or cfg.val_ids_split):
        raise SirenError("--target_false_alarm picks the threshold on validation streams: give --val_data_file "
                         "or --val_ids_split (with --ids_from), never the test streams")
    if cfg.val_ids_split and not cfg.ids_from:
        raise SirenError("--val_ids_split needs --ids_from (the splits.json listing it)")
    path = cfg.val_data_file or (cfg.data_file if cfg.source == "jsonl" else None)
    if path is None:
        raise SirenError("Qwen3GuardTest's *_loc splits hold no safe streams: give --val_data_file (SIREN-ready rows)")
    ids = _ids(cfg, cfg.val_ids_split) if cfg.val_ids_split else None
    records = [r for r in records_from_jsonl(path, ids=ids) if r.label == 0]
    if path == cfg.data_file and test_ids & {r.id for r in records}:
        raise SirenError("the validation streams overlap the evaluated ones: pick the threshold on another split "
                         "(--val_ids_split) or file (--val_data_file)")
    if not records:
        raise SirenError(f"{path}: no safe validation streams (label 0) to meet a false-alarm target on")
    return records


def stream_setup(cfg, guard) -> tuple[str, StreamRule, str]:
    """(verdict, rule, where the threshold came from) of an EvalStreamConfig: a value it sets wins,
    then (null) the guard's own stream rule (answer verdict), then configs/defaults.yaml's
    top-level debounce / min_answer_tokens / ema."""
    from siren import config as cfgmod

    has_head = bool(getattr(guard, "has_answer_head", False))
    verdict = ("response" if has_head else "text") if cfg.verdict == "auto" else cfg.verdict
    if verdict == "response" and not has_head:
        raise SirenError("--verdict response needs a guard with an answer head (siren.answer_head in its "
                         "siren_config.json); use --verdict text")
    saved = {}
    if verdict == "response":
        saved = dict(((guard.config.get("siren") or {}).get("answer_head") or {}).get("stream") or {})
    rule = {}
    for key in ("debounce", "min_answer_tokens", "ema"):
        value = getattr(cfg, key)
        if value is None:
            value = saved[key] if key in saved else cfgmod.default(key)
        rule[key] = value
    if rule["ema"] is not None and rule["ema"] == 1.0:
        rule["ema"] = None  # alpha 1 is the raw score
    if cfg.decision_threshold is not None:
        threshold, source = float(cfg.decision_threshold), "--decision_threshold"
    elif verdict == "response" and getattr(guard, "stream_threshold", None) is not None:
        threshold, source = float(guard.stream_threshold), "the guard's stream threshold"
    else:
        threshold, source = float(guard.default_threshold), "the guard's threshold"
    return verdict, StreamRule(threshold, int(rule["debounce"]), int(rule["min_answer_tokens"]), rule["ema"]), source


def score_records(guard, records: list[StreamRecord], cfg, verdict: str, threshold: float, what: str) -> list:
    """ScoreTraces of `records` (the authors' checkpoints always among the scored positions)."""
    start, traces = time.perf_counter(), []
    for i, rec in enumerate(records):
        extra = ()
        if rec.unsafe_start is not None and rec.unsafe_end is not None:
            ends = token_char_ends(guard.backbone.tokenizer, rec.response)[:cfg.max_tokens]
            if len(ends):
                _, p_end = span_token_bounds(ends, rec.unsafe_start, rec.unsafe_end)
                extra = tuple(checkpoints(p_end, len(ends), cfg.graces).values())
        prompt = rec.prompt if verdict == "response" or cfg.with_prompt else None
        traces.append(score_prefixes(guard, rec.response, prompt, every=cfg.every, extra_positions=extra,
                                     max_tokens=cfg.max_tokens, threshold=threshold,
                                     use_session=False if cfg.stateless else None, batch_size=cfg.batch_size,
                                     batch_tokens=cfg.batch_tokens, verdict=verdict))
        if (i + 1) % 10 == 0 or i + 1 == len(records):
            print(f"[siren] streamed {i + 1}/{len(records)} {what} ({time.perf_counter() - start:.0f} s)", flush=True)
    return traces


def run(args) -> int:
    from siren import config as cfgmod

    cfg = cfgmod.from_args("eval-stream", args)
    check_stream_args(cfg)      # every value before hours of streaming, not after
    report = evaluate_streams(cfg)
    print_summary(report)
    return 0


def evaluate_streams(cfg) -> dict:
    """Stream every record of an EvalStreamConfig through its guard; writes and returns the report."""
    from siren.fileio import atomic_write_json, atomic_write_text
    from siren.runtime.loading import open_guard

    seed = cfg.seed
    records = sample(load_records(cfg), cfg.limit, seed)
    if not records:
        raise SirenError("no streams to evaluate")
    val = None
    target = cfg.target_false_alarm
    if target is None and (cfg.val_data_file or cfg.val_ids_split):
        raise SirenError("validation streams were given but no target: pass --target_false_alarm (e.g. 0.1)")
    if target is not None:
        val = sample(validation_records(cfg, {r.id for r in records}), cfg.val_limit, seed)
    folder, guard = open_guard(cfg.model, device=cfg.device, dtype=cfg.dtype)
    verdict, rule, thr_source = stream_setup(cfg, guard)
    name = cfg.split if cfg.source == "qwen3guardtest" else Path(cfg.data_file).stem
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(folder) / f"streaming_{name}"
    out_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    if val is not None:
        val_traces = score_records(guard, val, cfg, verdict, rule.threshold, "safe validation streams")
        threshold = threshold_for_false_alarm([(t.positions, t.scores) for t in val_traces if len(t.scores)],
                                              rule, float(target))
        rule = rule.with_threshold(threshold)
        thr_source = f"validation: false alarms <= {target:g} on {len(val)} safe streams"
    traces = score_records(guard, records, cfg, verdict, rule.threshold, "streams")
    used_session = {t.used_session for t in traces}
    results = [stream_result(rec, t, rule=rule, graces=cfg.graces) for rec, t in zip(records, traces)]
    seconds = time.perf_counter() - start
    summary = summarize(results, cfg.graces)
    report = {
        "guard": str(folder),
        "decision_threshold": rule.threshold,
        "threshold_source": thr_source,
        "verdict": verdict,
        "rule": rule_dict(rule),
        "config": cfg.as_dict() | {"max_length": guard.max_length, "debounce": rule.debounce,
                                   "min_answer_tokens": rule.min_answer_tokens, "ema": rule.ema}
        | ({"split": None, "reference_tokenizer": None} if cfg.source == "jsonl" else {}),
        "scoring": "session" if used_session == {True} else "stateless" if used_session == {False} else "mixed",
        "seconds": round(seconds, 1),
        "summary": summary,
        "tradeoff": tradeoff_curve(results),
        "streams": results,
    }
    atomic_write_json(out_dir / "streaming_results.json", report)
    if cfg.save_traces:
        atomic_write_text(out_dir / "traces.jsonl", "".join(
            json.dumps({"id": r.id, "label": r.label, "positions": t.positions.tolist(),
                        "scores": [None if not np.isfinite(s) else round(float(s), 6) for s in t.scores]}) + "\n"
            for r, t in zip(records, traces)))
    plot_delays(out_dir / "detection_delay.png", results, rule.threshold, title=f"SIREN streaming · {name}")
    point = (summary.get("false_alarm_rate"), summary.get("detection_rate"))
    plot_tradeoff(out_dir / "tradeoff.png", report["tradeoff"], point,
                  title=f"SIREN streaming · {name} · {verdict} verdict, debounce {rule.debounce}")
    report["out_dir"] = str(out_dir)
    return report


def print_summary(report: dict) -> None:
    s = report["summary"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    r = report["rule"]
    print(f"\nstreams {s['n_streams']} (harmful {s['n_harmful']}, safe {s['n_safe']}), {report['verdict']} verdict, "
          f"threshold {report['decision_threshold']:.3g} ({report['threshold_source']}), debounce {r['debounce']}, "
          f"min answer tokens {r['min_answer_tokens']}, ema {r['ema']}; scored by the {report['scoring']} path "
          f"in {report['seconds']} s")
    if "detection_rate" in s:
        t = s["tokens_to_detection"]
        print(f"detection rate {pct(s['detection_rate'])} (finished answers {pct(s['finished_detection_rate'])}); "
              f"tokens-to-detection median {t['median']}, "
              f"mean {t['mean'] if t['mean'] is None else round(t['mean'], 1)}, p90 {t['p90']}")
    if "false_alarm_rate" in s:
        t = s["tokens_to_false_alarm"]
        print(f"false-alarm rate {pct(s['false_alarm_rate'])} (finished answers {pct(s['finished_false_alarm_rate'])}, "
              f"streaming tax {s['streaming_tax_points']:+.1f} points); tokens-to-false-alarm median {t['median']}")
    if "timely_recall" in s:
        cum = ", ".join(f"+{g}: {pct(v)}" for g, v in s["cumulative_recall"].items())
        cps = ", ".join(f"+{g}: {pct(v)}" for g, v in s["checkpoint_recall"].items())
        print(f"timely recall {pct(s['timely_recall'])}; cumulative recall {cum}")
        print(f"checkpoint recall (the authors' protocol) {cps}")
        print(f"localisation: exact hit {pct(s['loc_exact_hit'])}, "
              f"hit within 128 tokens {pct(s['loc_hit_within_128'])}")
        print("delay bins " + ", ".join(f"{k} {v}" for k, v in s["delay_bins"].items()))
    print(f"results: {report['out_dir']}/streaming_results.json, plots detection_delay.png, tradeoff.png")
