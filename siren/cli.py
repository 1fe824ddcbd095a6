"""`siren` command line: `siren data|backbone|extract|train|eval|score|serve ...`.

Each subcommand lives in its own module, which provides `add_arguments(parser)` and
`run(args) -> int`, in one pattern: the flags of its settings are generated from the config
keys (`siren.config.add_flags`), default to None, and `run` first resolves them against
`configs/defaults.yaml` into the command's typed config (`siren.config.from_args`), then
calls named stages with it; a command with actions (`data`, `backbone`) dispatches on
`args.action`.

Flag style, one rule: a flag is `--<config key>` in snake_case (the name of the YAML key and,
upper-cased, of the drivers' shell variable); a yes/no setting `x` is `--x` and its negation
`--no_x`; a subcommand is a word, or two joined by a hyphen (`eval-stream`). Only the module of the chosen
subcommand is imported, so `siren data ...` does not pay for importing torch. A SirenError
is printed as `siren <command>: error: ...` with exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from siren import __version__
from siren.errors import SirenError, is_disk_full, missing_package_message

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("siren.data_cli", "list datasets, write seeded splits, export Hub data to JSONL"),
    "backbone": ("siren.backbone_cli", "list, inspect or download a backbone"),
    "extract": ("siren.pipeline.extract", "extract per-layer features into the on-disk cache"),
    "train": ("siren.pipeline.train", "fit probes, select neurons, tune and save the guard"),
    "categories": ("siren.pipeline.category_cli", "fit the harm-category head of a trained guard from its cached features"),
    "eval": ("siren.evaluation.evaluate", "evaluate a trained guard per dataset"),
    "eval-stream": ("siren.evaluation.streaming", "streaming evaluation: how early harmful responses are caught"),
    "eval-think": ("siren.evaluation.generalization", "reasoning-trace evaluation per source model (Qwen3GuardTest)"),
    "score": ("siren.runtime.score_cli", "score texts with a trained guard"),
    "export": ("siren.export_cli", "write a trained guard in another runtime's format (llm_siren)"),
    "serve": ("siren.runtime.serve", "serve a trained guard over HTTP: OpenAI moderation endpoint, streaming, demo page"),
    "report": ("siren.evaluation.report", "compare SIREN with baselines and guard models on a run's splits"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siren", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"siren {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        parser = build_parser(only=chosen)
    except ImportError as err:  # set-up not run (e.g. `bash train/run_general_siren.sh` on a bare python3)
        print(f"siren {chosen or ''}: error: {missing_package_message(err)}".replace("  ", " "), file=sys.stderr)
        return 2
    except SirenError as err:   # the flags' defaults come from configs/defaults.yaml: a bad file is named here
        print(f"siren {chosen or ''}: error: {err}".replace("  ", " "), file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args._run(args) or 0)
    except SirenError as err:
        print(f"siren {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if (err.name or "siren").split(".")[0] == "siren":
            raise
        print(f"siren {args.command}: error: {missing_package_message(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001  (only a full disk is the user's to fix; anything else is a bug: re-raised)
        if not is_disk_full(err):
            raise
        print(f"siren {args.command}: error: no space left on device ({type(err).__name__}: {err}); free some space "
              "and run again: files written before are intact (every write is atomic)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
