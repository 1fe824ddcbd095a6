"""Small lookups for the shell drivers (scripts/report.sh): values come in as arguments, never
pasted into Python source, so any model name is data; a bad value is one line on stderr and
exit status 2, never a traceback.

    python -m siren.shellcmd run_dir MODEL          the run folder of a backbone
    python -m siren.shellcmd paper_guard MODEL      the paper's guard model for MODEL ('' if none)
    python -m siren.shellcmd data_dir RESULTS_JSON  the data_dir a training run used ('' if none)
"""

from __future__ import annotations

import json
import sys

from siren.errors import SirenError, missing_package_message


def run_dir(model: str) -> str:
    from siren.config import output_dir

    return str(output_dir(model))


def paper_guard(model: str) -> str:
    from siren.evaluation.guard_models import PAPER_GUARD_OF

    return PAPER_GUARD_OF.get(model, "")


def data_dir(results_json: str) -> str:
    try:
        with open(results_json, encoding="utf-8") as f:
            results = json.load(f)
    except OSError as err:
        raise SirenError(f"cannot read {results_json}: {err.strerror}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise SirenError(f"{results_json} is not valid JSON ({err}): the file is corrupt; "
                         "train again or set RUN to another run folder") from None
    config = results.get("config") if isinstance(results, dict) else None
    if not isinstance(config, dict):
        raise SirenError(f"{results_json} has no \"config\" object: not a training run's results.json; "
                         "set RUN to a run folder")
    value = config.get("data_dir")
    if value is not None and not isinstance(value, str):
        raise SirenError(f"{results_json}: config.data_dir must be a string or null, got {value!r}")
    return value or ""


LOOKUPS = {"run_dir": run_dir, "paper_guard": paper_guard, "data_dir": data_dir}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] not in LOOKUPS:
        print(f"usage: python -m siren.shellcmd {{{','.join(LOOKUPS)}}} VALUE", file=sys.stderr)
        return 2
    try:
        print(LOOKUPS[argv[0]](argv[1]))
    except SirenError as err:
        print(f"siren: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"siren: error: {missing_package_message(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
