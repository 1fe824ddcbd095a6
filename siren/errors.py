"""Errors shown to users as one clear message (the CLI prints them without a traceback)."""


class SirenError(Exception):
    """Bad input or a missing file: the message names the thing and the fix."""
