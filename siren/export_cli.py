"""`siren export`: write a trained guard in another runtime's format.

    siren export --model M --format llm_siren OUT_DIR

M: a guard folder or a backbone name (its run folder), as for `siren score`. `llm_siren`: the
folder PyPI `llm-siren` (`siren_guard.SirenGuard.from_pretrained`) loads, equal scores. Our guard
folders store a fold ensemble as its K heads; `llm-siren` reads one MLP, so the export holds the
dense network they compute (block-diagonal hidden layers, zeros included: larger on disk).
A single-head guard is written unchanged.
"""

from __future__ import annotations

FORMATS = ("llm_siren",)


def add_arguments(parser) -> None:
    parser.add_argument("out_dir", help="folder to write (must not be the guard folder)")
    parser.add_argument("--model", required=True, help="guard folder or backbone name (its run folder)")
    parser.add_argument("--format", choices=FORMATS, default="llm_siren", help="target format (default llm_siren)")


def run(args) -> int:
    from siren.artifact import export_llm_siren, folder_size
    from siren.log import log
    from siren.runtime.loading import local_guard

    out = export_llm_siren(local_guard(args.model, "siren export"), args.out_dir)
    log(f"wrote {out} ({folder_size(out)['total'] / 1e6:.1f} MB) for llm-siren")
    return 0
