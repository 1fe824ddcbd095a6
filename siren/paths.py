"""Where siren reads its shipped files and where it writes a user's outputs.

Reads: `configs/*.yaml`. The repository keeps them at its top level (the paper's layout, the one
copy anyone edits); the wheel ships that folder inside the package as `siren.configs`
(pyproject.toml maps it), read with importlib.resources, so `pip install siren-guard` works
without a checkout. Running from a checkout (or an editable install of one), the checkout's
own configs/ is read, so an edit there is seen at once and never mixed with another copy.

Writes nothing. User outputs never go into the installed package: run folders live under
`output_root()` ($SIREN_OUTPUT_DIR, else `train/probes/optuna/` under the current directory;
the shell drivers cd to the repository root first, so the paper's path is unchanged), and
caches under $SIREN_CACHE (siren.backbones.cache_root).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from siren.errors import SirenError

OUTPUT_ENV = "SIREN_OUTPUT_DIR"
_CHECKOUT = Path(__file__).resolve().parent.parent


def config_file(name: str):
    """configs/<name> as a path-like object with `read_text()`: the checkout's when siren runs
    from a source tree (pyproject.toml beside the package), else the copy in the installed
    package. SirenError naming the file when neither has it."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "configs" / name).is_file():
        return _CHECKOUT / "configs" / name
    try:
        shipped = importlib.resources.files("siren.configs") / name
    except ModuleNotFoundError:
        shipped = None
    if shipped is None or not shipped.is_file():
        raise SirenError(f"configs/{name} is missing from this siren install: reinstall it "
                         "(pip install --force-reinstall siren-guard) or run from a full checkout")
    return shipped


def output_root() -> Path:
    """The folder that holds the run folders `{MODEL}_general/`: $SIREN_OUTPUT_DIR, else
    ./train/probes/optuna (relative to where the user runs siren)."""
    return Path(os.environ.get(OUTPUT_ENV) or Path("train") / "probes" / "optuna").expanduser().absolute()
