"""Errors shown to users as one clear message (the CLI prints them without a traceback)."""

import sys


class SirenError(Exception):
    """Bad input or a missing file: the message names the thing and the fix."""


def missing_package_message(err: ImportError) -> str:
    """One line for a third-party package that is not installed (set-up not run yet, or run with
    another Python): names the package and the fix, instead of a ModuleNotFoundError traceback."""
    name = (getattr(err, "name", None) or str(err)).split(".")[0]
    return (f"the Python package {name!r} is not installed for {sys.executable}: run `bash scripts/setup.sh` "
            f"(it creates .venv with every dependency) and use .venv/bin/python, or `pip install -r requirements.txt`")


def is_disk_full(err: BaseException) -> bool:
    """An out-of-space failure, as an OSError (ENOSPC, EDQUOT) or as a library error that only
    carries the OS message (safetensors' SafetensorError)."""
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err) or "Disk quota exceeded" in str(err)


def check_unicode(text: str, what: str) -> str:
    """SirenError if `text` holds a lone UTF-16 surrogate (e.g. a "\\ud800" JSON escape, or a JS
    client that split a text between the two halves of an emoji): it is not a character, so it
    cannot be tokenised or written back. Returns `text`."""
    if text and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise SirenError(f"{what} holds a lone surrogate ({text[err.start]!r} at character {err.start}), "
                             "which is not a character: send valid Unicode (do not split a text inside a "
                             "surrogate pair)") from None
    return text


def run_main(main, prog: str, argv=None) -> int:
    """A script's `main(argv)` with the CLI's manners: a SirenError, a package that is not
    installed, or a full disk is one line on stderr and exit status 2, never a traceback."""
    try:
        return int((main() if argv is None else main(argv)) or 0)
    except SirenError as err:
        message = str(err)
    except ModuleNotFoundError as err:
        if (err.name or "siren").split(".")[0] == "siren":
            raise
        message = missing_package_message(err)
    except Exception as err:  # noqa: BLE001  (anything but a full disk is a bug: re-raised)
        if not is_disk_full(err):
            raise
        message = f"no space left on device ({err}): free some space and run again"
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
