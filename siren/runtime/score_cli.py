"""`siren score`: score texts with a trained guard; one JSON line per input.

    siren score --model M "some text"
    siren score --model M --prompt P --response R
    siren score --model M --jsonl < inputs.jsonl     # {"text"} or {"prompt","response"} per line

M: a guard folder, a backbone name (-> train/probes/optuna/<M>_general/ in the repo), or a
Hub repo holding a guard. Output lines: {"score", "is_harmful", "threshold"}. With --jsonl,
output line i answers non-blank input line i (blank lines are skipped); a malformed line stops
with an error naming its line number.
"""

from __future__ import annotations

import json
import sys

from siren.errors import SirenError

JSONL_CHUNK = 1024  # lines scored per round (the guard batches within it), then written out


def add_arguments(parser) -> None:
    parser.add_argument("text", nargs="?", help="the text to score (or use --prompt/--response, or --jsonl)")
    parser.add_argument("--model", required=True,
                        help="guard folder, backbone name (train/probes/optuna/<M>_general) or Hub id")
    parser.add_argument("--prompt", help="prompt (joined with the response by a newline)")
    parser.add_argument("--response", help="response")
    parser.add_argument("--jsonl", action="store_true",
                        help='read {"text"} or {"prompt","response"} lines on stdin, write one result line each')
    parser.add_argument("--decision_threshold", "--threshold", dest="threshold", type=float,
                        help="score >= this is harmful (default: the guard's)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", help="backbone dtype (default: the one the guard was trained with, else float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--batch_size", type=int, default=32, help="texts per forward at most (default 32)")
    parser.add_argument("--batch_tokens", type=int, default=16384, help="padded tokens per forward at most")
    parser.add_argument("--trust_remote_code", action="store_true")


def resolve_guard(model: str) -> str:
    """A guard folder, a backbone's run folder, or a Hub id (see `siren.config.find_guard`)."""
    from siren.config import find_guard

    return find_guard(model)


def _jsonl_text(line: str, lineno: int) -> str:
    from siren.features import join_prompt_response

    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise SirenError(f"stdin line {lineno}: not valid JSON ({err})") from err
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
    if "text" in row:
        return row["text"] or ""
    return join_prompt_response(row.get("prompt"), row.get("response"))


def _emit(result) -> None:
    sys.stdout.write(json.dumps({"score": result.score, "is_harmful": result.is_harmful,
                                 "threshold": result.threshold}) + "\n")


def run(args) -> int:
    if args.jsonl and (args.text is not None or args.prompt is not None or args.response is not None):
        raise SirenError("--jsonl reads stdin: do not also give a text or --prompt/--response")
    if args.text is not None and (args.prompt is not None or args.response is not None):
        raise SirenError("give a text or --prompt/--response, not both")
    if not args.jsonl and args.text is None and args.prompt is None and args.response is None:
        raise SirenError("nothing to score: give a text, --prompt/--response, or --jsonl with lines on stdin")
    if args.batch_size < 1 or args.batch_tokens < 1:
        raise SirenError("--batch_size and --batch_tokens must be >= 1")

    from siren.runtime.guard import SirenGuard

    guard = SirenGuard.from_pretrained(resolve_guard(args.model), device=args.device, dtype=args.dtype,
                                       trust_remote_code=args.trust_remote_code)
    if not args.jsonl:
        _emit(guard.score(args.text, prompt=args.prompt, response=args.response, threshold=args.threshold))
        return 0

    pending: list[str] = []

    def flush() -> None:
        for result in guard.score_batch(pending, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
                                        threshold=args.threshold):
            _emit(result)
        sys.stdout.flush()
        pending.clear()

    for lineno, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        pending.append(_jsonl_text(line, lineno))
        if len(pending) >= JSONL_CHUNK:
            flush()
    if pending:
        flush()
    return 0
