"""One typed configuration for every `siren` command; its defaults in `configs/defaults.yaml`.

`siren/config_keys.py` lists every key (type, allowed values, help, the commands that read it);
`configs/defaults.yaml` holds every default, and nothing else in `siren/` does
(tests/test_config_defaults.py fails on a default of a config key anywhere else). From the two:

- `config_class(command)`: a frozen dataclass per command (`TrainConfig`, `ServeConfig`, ...),
  one field per key the command reads, checked once when built (type, range, choices: a
  SirenError names the key, the value and what is allowed);
- `load(command, overrides, base=...)`: that dataclass from the YAML, then `base` (e.g. the
  training run's settings, for `siren eval`), then `overrides` (each non-None value wins);
- `add_flags(parser, command)` / `from_args(command, args)`: the command's argparse flags
  (`--<key>`, `--no_<key>` for a yes/no key; help text and the default shown) and back;
- the shell drivers' variables are the keys' names in upper case (tests/test_drivers.py
  checks every driver against the keys of its command, both ways).

Resolution: a command reads a key from its section of the YAML (`serve:`, `eval_stream:`, ...)
when the section sets it, else from the top level (`siren extract|train` read the top level).

Adding a key (one place, plus its value):
  1. one `Key(...)` line in `siren/config_keys.py` (type, commands, help; nullable, choices, min/max);
  2. its default in `configs/defaults.yaml`, at the top level or in the section of the
     commands whose default differs (a missing default is an error naming the key);
  3. read it as `cfg.<key>` in the command's code. The flag, the check, the field and the
     results.json entry follow; a driver that should pass it gets a variable `<KEY>` (the
     driver test says which are missing).

Also here: the run folder of a backbone (`output_dir`), the one place that maps a model to
`train/probes/optuna/{MODEL}_general/` (under the current directory, or $SIREN_OUTPUT_DIR:
siren.paths.output_root), and the guard resolver (`find_guard`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from pathlib import Path

import yaml

from siren.backbones import model_slug
from siren.config_keys import BY_NAME, COMMANDS, KEYS, SECTION, Key
from siren.errors import SirenError
from siren.paths import config_file, output_root

DEFAULTS_PATH = config_file("defaults.yaml")
OUTPUT_ROOT: Path | None = None  # set (tests) to pin the run folders' root; None: output_root()
SECTIONS = {s: c for c, s in SECTION.items() if s}


# --------------------------------------------------------------------------- checking values

def _type_ok(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _allowed(key: Key) -> str:
    kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[key.type]
    if key.choices:
        kind = "one of " + ", ".join(map(str, key.choices))
    bounds = [f">= {key.min:g}" if key.min is not None else "", f"<= {key.max:g}" if key.max is not None else ""]
    if any(bounds):
        kind += " " + " and ".join(b for b in bounds if b)
    if key.list:
        kind = ("a list of " if key.empty_ok else "a non-empty list of ") + kind
    return kind + (" or null" if key.nullable else "")


def check_value(key: Key, value, source: str | None):
    """`value` (as given, or float for an int given to a float key) if it is allowed for `key`;
    else a SirenError naming the source, the key, the value and what is allowed (source None:
    a command-line flag, named `--<key>`)."""
    def bad():
        where = f"--{key.name}" if source is None else f"{source}: {key.name}"
        return SirenError(f"{where} must be {_allowed(key)}, got {value!r}")

    if value is None:
        if key.nullable:
            return None
        raise bad()
    items = value if key.list else [value]
    if key.list and (not isinstance(value, (list, tuple)) or (not value and not key.empty_ok)):
        raise bad()
    for item in items:
        if not _type_ok(item, key.type) or (key.choices and item not in key.choices):
            raise bad()
        if key.type is float and not math.isfinite(item):
            raise bad()
        if key.type in (int, float) and ((key.min is not None and item < key.min)
                                         or (key.max is not None and item > key.max)):
            raise bad()
    if key.type is float:
        return [float(v) for v in items] if key.list else float(value)
    return list(value) if key.list else value


# --------------------------------------------------------------------------- configs/defaults.yaml

def _read_yaml() -> dict:
    from siren.fileio import load_yaml  # a key given twice is an error, not a silent override

    try:
        raw = load_yaml(DEFAULTS_PATH.read_text(encoding="utf-8"), str(DEFAULTS_PATH))
    except (OSError, yaml.YAMLError) as err:
        raise SirenError(f"cannot read {DEFAULTS_PATH}: {err}") from err
    if not isinstance(raw, dict):
        raise SirenError(f"{DEFAULTS_PATH}: expected a mapping of config keys, got {type(raw).__name__}")
    return raw


def _check_layer(layer: dict, source: str, allowed: set[str]) -> None:
    unknown = sorted(set(layer) - allowed)
    if unknown:
        raise SirenError(f"{source}: unknown config key(s) {', '.join(map(repr, unknown))}; "
                         f"known keys: {', '.join(sorted(allowed))}")
    for name, value in layer.items():
        check_value(BY_NAME[name], value, source)


@functools.lru_cache(maxsize=4)
def _all_defaults(path: Path, version: tuple) -> dict[str, dict]:
    """{command: {key: default}} from the YAML at `path` (cached per file version)."""
    raw = _read_yaml()
    top = {k: v for k, v in raw.items() if k not in SECTIONS}
    _check_layer(top, str(DEFAULTS_PATH), set(BY_NAME))
    out = {}
    for command in COMMANDS:
        keys = [k.name for k in KEYS if command in k.commands]
        section = raw.get(SECTION[command]) or {} if SECTION[command] else {}
        if not isinstance(section, dict):
            raise SirenError(f"{DEFAULTS_PATH}: {SECTION[command]} must be a mapping of config keys")
        _check_layer(section, f"{DEFAULTS_PATH} {SECTION[command]}", set(keys))
        values = {**top, **section}
        missing = [k for k in keys if k not in values]
        if missing:
            raise SirenError(f"{DEFAULTS_PATH}: missing key(s) {', '.join(missing)} (read by siren {command}): "
                             f"set them at the top level or in its section {SECTION[command] or ''}".rstrip())
        out[command] = {k: check_value(BY_NAME[k], values[k], f"{DEFAULTS_PATH} ({command})") for k in keys}
    return out


def _version() -> tuple:
    try:
        st = DEFAULTS_PATH.stat()
    except OSError as err:
        raise SirenError(f"cannot read {DEFAULTS_PATH}: {err}") from err
    return st.st_mtime_ns, st.st_size, st.st_ino


def command_defaults(command: str) -> dict:
    """{key: default} of `command` (a copy): its section of the YAML over the top level."""
    if command not in COMMANDS:
        raise SirenError(f"no typed config for command {command!r}: known are {', '.join(COMMANDS)}")
    return {k: (list(v) if isinstance(v, list) else v)
            for k, v in _all_defaults(DEFAULTS_PATH, _version())[command].items()}


def default(key: str, command: str | None = None):
    """The YAML default of `key`: for `command`, or the top level when None. A library call
    that is not given a value of a config key takes it from here, never from a literal."""
    if command is not None:
        return command_defaults(command)[key]
    raw = defaults()
    if key not in raw:
        raise SirenError(f"{DEFAULTS_PATH}: no top-level default of {key!r}")
    value = check_value(BY_NAME[key], raw[key], str(DEFAULTS_PATH))
    return list(value) if isinstance(value, list) else value


def defaults() -> dict:
    """The top level of configs/defaults.yaml with every section, each checked (the settings of
    `siren extract|train` and the shared ones; see `command_defaults` for one command's)."""
    command_defaults("train")  # checks the whole file
    return _read_yaml()


# --------------------------------------------------------------------------- the typed configs

class _Config:
    """Base of the per-command dataclasses: checked once when built; `as_dict()` for results files."""

    command = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = check_value(BY_NAME[f.name], getattr(self, f.name), f"siren {self.command}")
            object.__setattr__(self, f.name, value)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


_PYTYPES = {int: int, float: float, str: str, bool: bool}


@functools.cache
def config_class(command: str) -> type:
    """The frozen dataclass of `command`'s settings (`TrainConfig`, `EvalStreamConfig`, ...)."""
    if command not in COMMANDS:
        raise SirenError(f"no typed config for command {command!r}: known are {', '.join(COMMANDS)}")
    name = "".join(part.title() for part in command.split("-")) + "Config"
    fields = [(k.name, list[_PYTYPES[k.type]] if k.list else _PYTYPES[k.type]) for k in KEYS if command in k.commands]
    return dataclasses.make_dataclass(name, fields, bases=(_Config,), frozen=True,
                                      namespace={"command": command, "__module__": __name__})


def keys_of(command: str) -> list[str]:
    return [k.name for k in KEYS if command in k.commands]


def load(command: str, overrides: dict | None = None, *, base: dict | None = None):
    """`command`'s config: the YAML's defaults, then `base`'s non-None values (keys of other
    commands ignored: e.g. a training run's settings), then `overrides`' non-None values
    (an unknown key in `overrides` is an error)."""
    values = command_defaults(command)
    for key, value in (base or {}).items():
        if key in values and value is not None:
            values[key] = value
    unknown = sorted(set(overrides or {}) - set(values))
    if unknown:
        raise SirenError(f"siren {command}: unknown config key(s) {', '.join(map(repr, unknown))}; "
                         f"known keys: {', '.join(sorted(values))}")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_class(command)(**values)


# --------------------------------------------------------------------------- flags

def _shown(key: Key, command: str, value) -> str:
    if value is None:
        return key.null_text(command) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def add_flags(parser, command: str, *, required: tuple[str, ...] = (), default_note: dict | None = None) -> None:
    """One flag per key of `command`: `--<key>` (values parsed by the key's type; several for a
    list), `--<key>` / `--no_<key>` for a yes/no key. Every flag defaults to None ("not given"),
    so `from_args` can tell a given value from the YAML's default, which the help shows.
    `required`: keys that must be given; `default_note`: {key: text} shown before the default."""
    values = command_defaults(command)
    for name in keys_of(command):
        key = BY_NAME[name]
        note = (default_note or {}).get(name)
        shown = f"default: {note + ', else ' if note else ''}{_shown(key, command, values[name])}"
        helptext = f"{key.help} ({'required' if name in required else shown})".replace("%", "%%")
        if key.type is bool:
            group = parser.add_mutually_exclusive_group()
            group.add_argument(f"--{name}", dest=name, action="store_const", const=True, default=None, help=helptext)
            group.add_argument(f"--no_{name}", dest=name, action="store_const", const=False, help=f"the opposite of --{name}")
            continue
        kw = dict(type=_PYTYPES[key.type], default=None, help=helptext, required=name in required)
        if key.list:
            kw["nargs"] = "*" if key.empty_ok else "+"
        if key.choices:   # checked by the config (a SirenError naming the key), not by argparse
            kw["metavar"] = "{" + ",".join(map(str, key.choices)) + "}"
        parser.add_argument(f"--{name}", **kw)


def given(args, command: str) -> dict:
    """{key: value} of the flags of `command` given on the command line."""
    return {k: getattr(args, k) for k in keys_of(command) if getattr(args, k, None) is not None}


def from_args(command: str, args, *, base: dict | None = None):
    """`command`'s config: YAML defaults, then `base`, then the flags given in `args` (a bad
    flag is named as such)."""
    flags = given(args, command)
    for name, value in flags.items():
        check_value(BY_NAME[name], value, None)
    return load(command, flags, base=base)


# --------------------------------------------------------------------------- run folders and guards

def output_dir(model: str) -> Path:
    """The run folder of a backbone: train/probes/optuna/{model_slug(model)}_general/ under the
    current directory ($SIREN_OUTPUT_DIR/{model_slug(model)}_general/ when that is set).

    Training writes there and `siren eval` / `siren score` look there, so a guard trained for a
    registry name, a Hub id or a local folder is found again under the same name."""
    return (OUTPUT_ROOT or output_root()) / f"{model_slug(model)}_general"


def default_datasets(data_dir: str | None) -> list[str]:
    """The `datasets` of defaults.yaml (the paper's list). With a local data dir (`data_dir`, else
    $SIREN_DATA_DIR), only those that have a folder there, the others named in the log, so a
    default offline run trains on what it has. Datasets named by the user are never dropped."""
    from siren.data import resolve_data_dir
    from siren.log import log

    datasets = list(command_defaults("train")["datasets"] or [])
    folder = resolve_data_dir(data_dir)
    if folder is None:
        return datasets
    present = [d for d in datasets if (folder / d).is_dir()]
    for d in datasets:
        if d not in present:
            log(f"{d}: not in {folder}, left out (name it in DATASETS / --datasets to require it)")
    if not present:
        raise SirenError(f"none of the default datasets ({', '.join(datasets)}) has a folder in {folder}: "
                         "set DATASETS / --datasets or the data dir")
    return present


def find_guard(model: str) -> str:
    """Where the guard for `model` is: a guard folder given directly; else the run folder of a
    backbone (`output_dir`: registry name, local backbone folder or Hub id); else, for a Hub id
    with no local run, the id itself (a Hub repo holding a guard). SirenError otherwise."""
    from siren.artifact import CONFIG_NAME
    from siren.backbones import model_kind

    path = Path(model).expanduser()
    if (path / CONFIG_NAME).is_file():
        return str(path)
    kind = model_kind(model)
    run = output_dir(model)
    if (run / CONFIG_NAME).is_file():
        return str(run)
    if kind == "hub":
        return model
    if kind == "local":
        raise SirenError(f"{path} is not a guard folder (no {CONFIG_NAME}), and no guard was trained for it as a "
                         f"backbone folder (expected {run}): pass a guard folder, or train one with "
                         f"`siren train --model {model}`")
    raise SirenError(f"no trained guard for backbone {model!r}: expected {run}. Train one with "
                     f"`siren train --model {model}` or pass a guard folder")
