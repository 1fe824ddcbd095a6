"""Qwen3GuardTest (Hugging Face `Qwen/Qwen3GuardTest`, CC-BY-NC-4.0): rows -> what our evaluations read.

Reads the Hub (`datasets.load_dataset`) or a local copy of one of its JSONL files
(`thinking.jsonl`, `thinking_loc.jsonl`, `response_loc.jsonl`: the same columns, one object a
line). Writes nothing.

Columns used: `unique_id`; `message` (chat turns `{"role", "content"}`: the user's prompt and
the model's response, the reasoning trace inline for the thinking splits); `label` ("Safe" /
"Unsafe"; anything else, e.g. "Controversial", is left out); `source` (the model that wrote
the response, e.g. "deepseek-ai/...", "...GLM...", "Qwen/Qwen3-..."); `unsafe_type`; and, in the
`*_loc` splits (every row unsafe), `input_ids` (the Qwen3 chat-template tokenisation of the
whole conversation) with `unsafe_start_index` / `unsafe_end_index`, the first and last token
(inclusive) of the first unsafe sentence in those ids.

- `thinking` -> `thinking_rows`: prompt, response, label, source and the source-model group
  (GLM / Qwen3 / Deepseek, as the authors group them; other sources are left out).
- `*_loc` -> `loc_records`: `StreamRecord`s whose unsafe span is converted from Qwen3 token
  indices to character offsets in the assistant's rendered text, so that any guard can
  count tokens with its own tokenizer. This needs the tokenizer that made `input_ids`
  (any Qwen3 tokenizer; `--reference_tokenizer`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from siren.errors import SirenError
from siren.evaluation.streaming import StreamRecord

HUB_ID = "Qwen/Qwen3GuardTest"
SPLITS = ("thinking", "thinking_loc", "response_loc")
DEFAULT_REFERENCE_TOKENIZER = "Qwen/Qwen3-0.6B"
GROUPS = ("GLM", "Qwen3", "Deepseek")  # the authors' order
ASSISTANT_HEADER = "<|im_start|>assistant"


def load_rows(split: str, data_file: str | Path | None = None) -> list[dict]:
    """The rows of one split: from `data_file` (a local JSONL copy) if given, else the Hub."""
    if data_file is not None:
        path = Path(data_file)
        if not path.is_file():
            raise SirenError(f"{path} does not exist: pass a local copy of Qwen3GuardTest's {split}.jsonl")
        rows = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except (json.JSONDecodeError, RecursionError) as err:
                        raise SirenError(f"{path}:{i}: not JSON ({err})") from None
                    if not isinstance(row, dict):
                        raise SirenError(f"{path}:{i}: a row must be a JSON object, got {type(row).__name__}")
                    rows.append(row)
        return rows
    if split not in SPLITS:
        raise SirenError(f"Qwen3GuardTest has no split {split!r}: use one of {', '.join(SPLITS)}")
    try:
        from datasets import load_dataset

        return [dict(r) for r in load_dataset(HUB_ID, split=split)]
    except Exception as err:  # network, auth, missing split
        raise SirenError(f"could not load {HUB_ID} split {split!r} from the Hugging Face Hub ({err}); "
                         f"download {split}.jsonl and pass it as --data_file") from err


def label_of(row: Mapping) -> int | None:
    """"Safe" -> 0, "Unsafe" -> 1 (any case), anything else -> None (left out)."""
    value = str(row.get("label", "")).strip().lower()
    return {"safe": 0, "unsafe": 1}.get(value)


def source_group(source: str | None) -> str | None:
    """The authors' grouping of source models: Deepseek, GLM, Qwen3, or None (left out)."""
    if not source or not isinstance(source, str):
        return None
    if source.startswith("deepseek-ai/"):
        return "Deepseek"
    if "GLM" in source:
        return "GLM"
    if "Qwen3" in source:
        return "Qwen3"
    return None


def prompt_response(row: Mapping) -> tuple[str, str]:
    """(last user turn, last assistant turn) of `message`; "" where a role is absent."""
    from siren.evaluation.eval_checks import check_message

    messages = row.get("message")
    check_message(messages, f"row {row.get('unique_id')!r}")
    user = assistant = ""
    for m in messages:
        if m.get("role") == "user":
            user = m.get("content") or ""
        elif m.get("role") == "assistant":
            assistant = m.get("content") or ""
    return user, assistant


def thinking_rows(rows: Iterable[Mapping]) -> tuple[list[dict], dict]:
    """`thinking` rows -> ([{id, prompt, response, label, source, group}], counts left out).

    Rows whose label is neither Safe nor Unsafe, or whose source is outside the three groups,
    are left out (as the authors do) and counted."""
    out, dropped = [], {"label": 0, "source": 0}
    for i, row in enumerate(rows):
        label = label_of(row)
        group = source_group(row.get("source"))
        if label is None:
            dropped["label"] += 1
            continue
        if group is None:
            dropped["source"] += 1
            continue
        prompt, response = prompt_response(row)
        out.append({"id": str(row.get("unique_id", f"thinking-{i:05d}")), "prompt": prompt, "response": response,
                    "label": label, "source": row.get("source"), "group": group})
    return out, dropped


def reference_tokenizer(name: str | None = None):
    """The tokenizer that produced the `*_loc` splits' input_ids (any Qwen3 tokenizer)."""
    from transformers import AutoTokenizer

    name = name or DEFAULT_REFERENCE_TOKENIZER
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise SirenError(f"could not load the reference tokenizer {name!r} ({err}): pass --reference_tokenizer "
                         "with a local Qwen3 model or tokenizer folder") from err


def _special_id(tokenizer, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise SirenError(f"the reference tokenizer has no {token} token: it did not make these input_ids "
                         "(use a Qwen3 tokenizer)")
    return int(tid)


def assistant_bounds(input_ids: Sequence[int], tokenizer) -> tuple[int, int]:
    """(i, e): index of the `<|im_start|>` opening the last assistant turn, and the index of
    its closing `<|im_end|>` (len(input_ids) if unclosed)."""
    start_id, end_id = _special_id(tokenizer, "<|im_start|>"), _special_id(tokenizer, "<|im_end|>")
    ids = list(input_ids)
    # "assistant" is one token in Qwen3's vocabulary, but need not be in another tokenizer's
    opening = [i for i, t in enumerate(ids[:-1]) if t == start_id
               and tokenizer.decode(ids[i + 1:i + 10]).startswith("assistant")]
    if not opening:
        raise SirenError("no assistant turn (<|im_start|>assistant) in input_ids: wrong reference tokenizer?")
    i = opening[-1]
    e = next((j for j in range(i + 1, len(ids)) if ids[j] == end_id), len(ids))
    return i, e


def loc_record(row: Mapping, tokenizer) -> StreamRecord:
    """One `*_loc` row -> a StreamRecord: the assistant turn as rendered in input_ids (reasoning
    tags included, chat header and end token excluded) and the first unsafe sentence as
    character offsets [unsafe_start, unsafe_end) in it."""
    uid = str(row.get("unique_id"))
    ids = row.get("input_ids")
    if not isinstance(ids, list) or not ids:
        raise SirenError(f"row {uid}: no input_ids (only the *_loc splits carry unsafe spans)")
    i, e = assistant_bounds(ids, tokenizer)

    def text(stop: int) -> str:
        return tokenizer.decode(ids[i:stop], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    full = text(e)
    if not full.startswith(ASSISTANT_HEADER):
        raise SirenError(f"row {uid}: the assistant turn does not start with {ASSISTANT_HEADER!r}")
    h = len(ASSISTANT_HEADER) + (1 if full[len(ASSISTANT_HEADER):].startswith("\n") else 0)
    response = full[h:]
    label = label_of(row)
    if label is None:
        raise SirenError(f"row {uid}: label {row.get('label')!r} is neither Safe nor Unsafe")
    prompt, _ = prompt_response(row)
    rec = StreamRecord(id=uid, response=response, label=label, prompt=prompt,
                       source=row.get("source"), unsafe_type=row.get("unsafe_type"))
    s, t = row.get("unsafe_start_index"), row.get("unsafe_end_index")
    if label == 1 and s is not None and t is not None and int(s) >= 0 and int(t) >= int(s):
        clamp = lambda c: min(max(c, 0), len(response))  # noqa: E731  (a span inside the prompt -> 0)
        rec.unsafe_start = clamp(len(text(max(int(s), i))) - h)
        rec.unsafe_end = max(clamp(len(text(min(int(t) + 1, e))) - h), rec.unsafe_start)
    return rec


def loc_records(rows: Iterable[Mapping], tokenizer) -> list[StreamRecord]:
    """`thinking_loc` / `response_loc` rows -> StreamRecords (rows labelled neither Safe nor Unsafe left out)."""
    return [loc_record(r, tokenizer) for r in rows if label_of(r) is not None]
