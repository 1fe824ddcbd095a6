"""Finding and loading a trained guard by what a user names: what `siren score`, `siren serve`,
`siren eval-stream`, `siren eval-think`, `siren eval` and `siren export` share (no CLI here).

The one resolver is `siren.config.find_guard` (a guard folder, a backbone's run folder, or a Hub
id): `resolve_guard` is it, `local_guard` the same for commands that read or write files beside
the guard, and `open_guard` resolves and loads a `SirenGuard`.
"""

from __future__ import annotations

from pathlib import Path

from siren.config import find_guard
from siren.errors import SirenError

__all__ = ["resolve_guard", "local_guard", "open_guard"]


def resolve_guard(model: str) -> str:
    """A guard folder, a backbone's run folder, or a Hub id (see `siren.config.find_guard`)."""
    return find_guard(model)


def local_guard(model: str, what: str = "this command") -> Path:
    """As `resolve_guard`, but a folder on this machine (SirenError naming the fix for a Hub id)."""
    found = find_guard(model)
    if not Path(found).is_dir():
        raise SirenError(f"{what} needs a guard folder on this machine, and {model!r} is a Hub id with no local run: "
                         f"download it first (huggingface-cli download {model} --local-dir DIR) and pass DIR")
    return Path(found)


def open_guard(model: str, *, device=None, dtype=None, trust_remote_code: bool | None = None,
               compile: bool | None = None):
    """(where the guard was found, the loaded `SirenGuard`); trust_remote_code and compile None:
    `siren serve`'s settings in configs/defaults.yaml."""
    from siren.config import default
    from siren.runtime.guard import SirenGuard

    trust_remote_code = default("trust_remote_code", "serve") if trust_remote_code is None else trust_remote_code
    compile = default("compile", "serve") if compile is None else compile

    folder = resolve_guard(model)
    guard = SirenGuard.from_pretrained(folder, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                       compile=compile)
    return folder, guard
