"""`siren score`: score texts with a trained guard; one JSON line per input.

    siren score --model M "some text"
    siren score --model M --prompt P --response R
    siren score --model M --jsonl < inputs.jsonl     # {"text"} or {"prompt","response"} per line

M: a guard folder, a backbone name (-> train/probes/optuna/<M>_general/ under the
current directory, or $SIREN_OUTPUT_DIR/<M>_general/), or a
Hub repo holding a guard. Output lines: {"score", "is_harmful", "threshold"}, plus "categories"
and "category_scores" (the trained harm categories) when the guard has a category head. With --jsonl,
output line i answers non-blank input line i (blank lines are skipped). A bad line (not JSON,
not UTF-8, a lone surrogate, no text field) stops the run with an error naming its line
number and exit status 2, after the results of every line before it have been written, so
the output is always a prefix of the full answer.
"""

from __future__ import annotations

import json
import sys

from siren import config
from siren.checks import check_device
from siren.errors import SirenError

JSONL_CHUNK = 1024  # lines scored per round (the guard batches within it), then written out


def add_arguments(parser) -> None:
    parser.add_argument("text", nargs="?", help="the text to score (or use --prompt/--response, or --jsonl)")
    parser.add_argument("--prompt", help="prompt (joined with the response by a newline)")
    parser.add_argument("--response", help="response")
    parser.add_argument("--jsonl", action="store_true",
                        help='read {"text"} or {"prompt","response"} lines on stdin, write one result line each')
    config.add_flags(parser, "score", required=("model",))


def _check_chars(value: str, where: str) -> None:
    """SirenError if `value` holds a lone surrogate (from a "\\ud800" escape, or a non-UTF-8 byte
    in a command-line argument): it is not a character and cannot be tokenised."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise SirenError(f"{where} holds a lone surrogate or an undecodable byte ({value[err.start]!r} at "
                         f"character {err.start}): give valid UTF-8 text") from None


def _decode_line(raw: bytes, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SirenError(f"stdin line {lineno}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte "
                         f"{err.start + 1} of the line); send UTF-8 text") from None


def _jsonl_item(line: str, lineno: int) -> str | tuple[str | None, str | None]:
    """A line's text (a str), or its (prompt, response) pair (a tuple), checked."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise SirenError(f"stdin line {lineno}: not valid JSON ({err})") from err
    except RecursionError:
        raise SirenError(f"stdin line {lineno}: JSON nested too deeply; send one flat object a line") from None
    if not isinstance(row, dict):
        raise SirenError(f"stdin line {lineno}: expected a JSON object with \"text\" or \"prompt\"/\"response\"")
    has_pair = "prompt" in row or "response" in row
    if "text" in row and has_pair:
        raise SirenError(f"stdin line {lineno}: give \"text\" or \"prompt\"/\"response\", not both")
    if "text" in row:
        fields = ["text"]
    elif has_pair:
        fields = [k for k in ("prompt", "response") if k in row]
    else:
        raise SirenError(f"stdin line {lineno}: no \"text\", \"prompt\" or \"response\" field")
    for k in fields:
        if row[k] is not None and not isinstance(row[k], str):
            raise SirenError(f"stdin line {lineno}: field {k!r} must be a string, got {type(row[k]).__name__}")
        if row[k] is not None:
            _check_chars(row[k], f"stdin line {lineno}: field {k!r}")
    if "text" in row:
        return row["text"] or ""
    return row.get("prompt"), row.get("response")


def _emit(result) -> None:
    """One JSON line: the whole text's verdict, then (a pair) the prompt's and the answer's, then the
    categories (ScoreResult.to_dict: parts the guard does not give are left out)."""
    sys.stdout.write(json.dumps(result.to_dict()) + "\n")


def score_items(guard, items: list, cfg) -> list:
    """ScoreResults of `items` in order: texts (str) through score_batch, (prompt, response) pairs
    through score_pairs (both verdicts); one call for each kind."""
    texts = [i for i, x in enumerate(items) if isinstance(x, str)]
    pairs = [i for i, x in enumerate(items) if not isinstance(x, str)]
    kw = dict(batch_size=cfg.batch_size, batch_tokens=cfg.batch_tokens, threshold=cfg.decision_threshold)
    out: list = [None] * len(items)
    for i, r in zip(texts, guard.score_batch([items[i] for i in texts], **kw) if texts else []):
        out[i] = r
    for i, r in zip(pairs, guard.score_pairs([items[i] for i in pairs], **kw) if pairs else []):
        out[i] = r
    return out


def run(args) -> int:
    if args.jsonl and (args.text is not None or args.prompt is not None or args.response is not None):
        raise SirenError("--jsonl reads stdin: do not also give a text or --prompt/--response")
    if args.text is not None and (args.prompt is not None or args.response is not None):
        raise SirenError("give a text or --prompt/--response, not both")
    if not args.jsonl and args.text is None and args.prompt is None and args.response is None:
        raise SirenError("nothing to score: give a text, --prompt/--response, or --jsonl with lines on stdin")
    # Checked before the guard and its backbone load: a bad value costs nothing.
    cfg = config.from_args("score", args)
    check_device(cfg.device)
    for name in ("text", "prompt", "response"):
        if getattr(args, name) is not None:
            _check_chars(getattr(args, name), "the text" if name == "text" else f"--{name}")

    from siren.runtime.loading import open_guard

    _, guard = open_guard(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if not args.jsonl:
        _emit(guard.score(args.text, prompt=args.prompt, response=args.response, threshold=cfg.decision_threshold))
        return 0

    pending: list = []

    def flush() -> None:
        for result in score_items(guard, pending, cfg):
            _emit(result)
        sys.stdout.flush()
        pending.clear()

    # Bytes, decoded line by line: a bad byte is reported with its line, and the lines before it
    # are still scored.
    stdin = getattr(sys.stdin, "buffer", None)
    lines = stdin if stdin is not None else (line.encode("utf-8", "surrogatepass") for line in sys.stdin)
    for lineno, raw in enumerate(lines, start=1):
        try:
            line = _decode_line(raw, lineno)
            if not line.strip():
                continue
            pending.append(_jsonl_item(line, lineno))
        except SirenError:
            flush()  # every result before the bad line, then the error
            raise
        if len(pending) >= JSONL_CHUNK:
            flush()
    if pending:
        flush()
    return 0
