"""The answer verdict in `siren eval`: on the test rows that carry a response (prompt + answer,
e.g. beavertails and safe_rlhf), the guard's answer verdict at its decision threshold beside its
whole-text verdict on the same rows (eval_results.json's `answers` block).

Reads: the guard folder (loaded with its backbone: the answer's pool needs a forward of prompt +
answer, which the feature cache does not hold) and the evaluated datasets' test rows.
Returns: {"threshold", "datasets": {name: {"answer": metrics, "whole_text": metrics}}, "average":
{"answer_f1", "whole_text_f1"}, "seconds"}, or None when the guard has no answer head or no
test row has a response.
"""

from __future__ import annotations

import time

import numpy as np

from siren.log import log


def response_test_rows(name: str, split_kw: dict) -> tuple[list, np.ndarray]:
    """(pairs [(prompt, response)], labels (n,)) of a dataset's test rows with a non-empty response."""
    from siren import data

    frame = data.load_splits(name, **split_kw).get("test")
    if frame is None or "response" not in frame:
        return [], np.zeros(0, dtype=np.int64)
    keep = frame["response"].map(lambda r: isinstance(r, str) and bool(r.strip())).to_numpy()
    sub = frame[keep]
    prompts = [p if isinstance(p, str) else None for p in sub["prompt"]] if "prompt" in sub else [None] * len(sub)
    return list(zip(prompts, sub["response"].tolist())), sub["label"].to_numpy().astype(np.int64)


def evaluate_answers(folder, datasets: list[str], split_kw: dict, cfg, metrics) -> dict | None:
    """The `answers` block (see the module docstring). cfg: the eval config (device, dtype, batch
    sizes); metrics(y, score, threshold) -> dict: the eval's own classification metrics."""
    from siren.runtime.guard import SirenGuard

    rows = {name: response_test_rows(name, split_kw) for name in datasets}
    rows = {name: r for name, r in rows.items() if len(r[0])}
    if not rows:
        return None
    start = time.perf_counter()
    guard = SirenGuard.from_pretrained(str(folder), device=cfg.device, dtype=cfg.dtype)
    if not guard.has_answer_head:
        return None
    out = {"threshold": guard.answer_threshold, "whole_text_threshold": guard.default_threshold, "datasets": {}}
    for name, (pairs, y) in rows.items():
        log(f"answer verdict: scoring {len(pairs)} {name} test rows with a response")
        results = guard.score_pairs(pairs, batch_size=cfg.batch_size, batch_tokens=cfg.batch_tokens)
        answer = np.array([r.response.score if r.response is not None else np.nan for r in results])
        read = np.isfinite(answer)   # an answer truncated away by max_length has no verdict
        whole = np.array([r.score for r in results])
        out["datasets"][name] = {"answer": metrics(y[read], answer[read], guard.answer_threshold),
                                 "whole_text": metrics(y[read], whole[read], guard.default_threshold),
                                 "no_answer_read": int((~read).sum())}
    both = [d for d in out["datasets"].values() if "f1" in d["answer"]]
    if both:
        out["average"] = {"answer_f1": float(np.mean([d["answer"]["f1"] for d in both])),
                          "whole_text_f1": float(np.mean([d["whole_text"]["f1"] for d in both]))}
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


def markdown(block: dict) -> list[str]:
    """The block as a table for the terminal."""
    lines = [f"answer verdict (threshold {block['threshold']:.3f}) beside the whole text's "
             f"({block['whole_text_threshold']:.3f}) on the test rows with a response:",
             "| dataset | rows | answer macro-F1 | whole-text macro-F1 |", "|---|---:|---:|---:|"]
    for name, d in block["datasets"].items():
        a, w = d["answer"], d["whole_text"]
        lines.append(f"| {name} | {a['n']} | {a.get('f1', float('nan')):.4f} | {w.get('f1', float('nan')):.4f} |")
    if block.get("average"):
        lines.append(f"| average | | {block['average']['answer_f1']:.4f} | {block['average']['whole_text_f1']:.4f} |")
    return lines
