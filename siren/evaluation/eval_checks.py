"""Start-up checks of `siren eval-stream` and `siren eval-think`, and of the rows they read.

Everything a user types or a data file holds is checked before the guard loads, so a bad
value is one line naming it and the fix, never a traceback after the evaluation has run (and
never a result file of `None`s). Called at the start of each command's `run(args)`, so the
checks hold whatever defines the flags.
"""

from __future__ import annotations

import math
from pathlib import Path

from siren.errors import SirenError, check_unicode

LOC_SPLITS = ("thinking_loc", "response_loc")   # the Qwen3GuardTest splits with unsafe spans


def _int_at_least(value, name: str, minimum: int, hint: str = "") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SirenError(f"{name} is {value!r}: it must be an integer >= {minimum}{hint}")


def _threshold(value) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
        raise SirenError(f"--decision_threshold {value!r} must be a number in [0, 1] (a text is harmful when its "
                         "score >= the decision threshold), e.g. 0.5")


def _data_file(value) -> None:
    if value is not None and not Path(value).is_file():
        raise SirenError(f"--data_file {value} is not a file: pass a local JSONL copy of the split")


def check_out_file(value, name: str = "--out") -> None:
    """A JSON file path to write at the end: not a folder, its folder creatable and writable."""
    from siren.checks import check_writable_dir

    if value is None:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        raise SirenError(f"{name} {path} is a folder: give a file path, e.g. {path / 'think_eval_results.json'}")
    check_writable_dir(path.parent, f"{name}'s folder")


def check_stream_args(args) -> None:
    """`siren eval-stream`'s values (its EvalStreamConfig, or parsed flags), before any row or the guard is read."""
    from siren.checks import check_out_dir

    if args.source == "qwen3guardtest" and args.split not in LOC_SPLITS:
        raise SirenError(f"--split {args.split!r} is not a Qwen3GuardTest split with unsafe spans: use one of "
                         f"{', '.join(LOC_SPLITS)} (or --source jsonl for SIREN-ready rows)")
    _data_file(args.data_file)
    _int_at_least(args.limit, "--limit", 1, " (leave it out for all streams)")
    _int_at_least(args.every, "--every", 0, " (0: the checkpoints only)")
    _int_at_least(args.max_tokens, "--max_tokens", 1, " (leave it out to read every token)")
    _int_at_least(args.debounce, "--debounce", 1)
    _int_at_least(args.batch_size, "--batch_size", 1)
    _int_at_least(args.batch_tokens, "--batch_tokens", 1)
    graces = list(args.graces or [])
    if not graces:
        raise SirenError("--graces needs at least one number of tokens, e.g. --graces 32 64 128 256")
    for g in graces:
        _int_at_least(g, "a --graces value", 1, ", tokens after the unsafe sentence (e.g. 32 64 128 256)")
    if len(set(graces)) != len(graces):
        raise SirenError(f"--graces {' '.join(map(str, graces))} repeats a value: give each once")
    _threshold(args.decision_threshold)
    _int_at_least(args.min_answer_tokens, "--min_answer_tokens", 0)
    if args.ema is not None and not (isinstance(args.ema, (int, float)) and not isinstance(args.ema, bool)
                                     and 0 < args.ema <= 1):
        raise SirenError(f"--ema {args.ema!r} must be an EMA alpha in (0, 1] (1: the raw scores; leave it out for "
                         "the guard's stream rule)")
    if args.target_false_alarm is not None and not (isinstance(args.target_false_alarm, (int, float))
                                                    and math.isfinite(args.target_false_alarm)
                                                    and 0 <= args.target_false_alarm <= 1):
        raise SirenError(f"--target_false_alarm {args.target_false_alarm!r} must be a share in [0, 1], e.g. 0.1")
    _int_at_least(args.val_limit, "--val_limit", 1, " (leave it out for all safe validation streams)")
    if args.val_data_file is not None and not Path(args.val_data_file).is_file():
        raise SirenError(f"--val_data_file {args.val_data_file} is not a file: pass SIREN-ready JSONL rows")
    if args.out_dir is not None:
        check_out_dir(args.out_dir)


def check_think_args(args) -> None:
    """`siren eval-think`'s values (its EvalThinkConfig, or parsed flags), before any row or the guard is read."""
    from siren.evaluation.qwen3guardtest import SPLITS

    if args.split not in SPLITS:
        raise SirenError(f"--split {args.split!r} is not a Qwen3GuardTest split: use thinking "
                         f"(the reasoning-trace rows; known: {', '.join(SPLITS)})")
    _data_file(args.data_file)
    _int_at_least(args.limit, "--limit", 1, " (leave it out for all rows)")
    _int_at_least(args.batch_size, "--batch_size", 1)
    _int_at_least(args.batch_tokens, "--batch_tokens", 1)
    _threshold(args.decision_threshold)
    check_out_file(args.out)


# --------------------------------------------------------------------------- rows

def check_text_field(value, field: str, where: str, *, nullable: bool = False) -> None:
    """A row's text field: a string (or null where allowed) holding only real characters."""
    if value is None and nullable:
        return
    if not isinstance(value, str):
        kind = "a string or null" if nullable else "a string"
        got = "null" if value is None else type(value).__name__
        raise SirenError(f"{where}: {field} must be {kind}, got {got}; fix the row or leave it out")
    check_unicode(value, f"{where}: {field}")


def check_row_id(row: dict, where: str) -> str:
    """The row's id as text: a non-empty string or an integer."""
    if "id" not in row:
        raise SirenError(f"{where}: the row has no \"id\": every row needs a unique id (a string or an integer)")
    value = row["id"]
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value)):
        raise SirenError(f"{where}: id must be a non-empty string or an integer, got {value!r}")
    if isinstance(value, str):
        check_unicode(value, f"{where}: id")
    return str(value)


def check_message(messages, where: str) -> None:
    """A chat `message` list: objects with a string role and string (or null) content."""
    if not isinstance(messages, list):
        raise SirenError(f"{where}: 'message' must be a list of chat turns ({{\"role\", \"content\"}}), "
                         f"got {type(messages).__name__}")
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            raise SirenError(f"{where}: message[{j}] must be an object {{\"role\", \"content\"}}, "
                             f"got {type(m).__name__} {str(m)[:40]!r}")
        check_text_field(m.get("content"), "content", f"{where}: message[{j}]", nullable=True)
