"""Errors that are the user's to fix, told apart from our bugs by their type.

The rule: code that checks something the user gave us (a config key, a command-line value, a prompt
file, a model or LoRA folder, a run directory, a checkpoint, a reward server request) raises a
:class:`UserError` whose message names the problem and the fix. Where a library parses the user's
file (safetensors, json, peft, diffusers), the narrowest ``try`` around that one call turns the
library's exception into a :class:`UserError` naming the file. Every other exception, a ``ValueError``
from deeper in our code included, is a bug: the ``dgpo`` command prints one line and exits with
status 2 for a :class:`UserError`, and keeps the full traceback for anything else (``--debug``
shows it for a :class:`UserError` too).

Each subclass also derives from the built-in exception that the same mistake raised before, so that
``except ValueError`` / ``except FileNotFoundError`` / ``except ImportError`` keep working.
"""

from __future__ import annotations

import reprlib
from pathlib import Path


class UserError(Exception):
    """A mistake in what the user gave us; the message names it and says how to fix it."""


class InputError(UserError, ValueError):
    """A value, file or folder that is malformed (wrong type, out of range, corrupt, inconsistent)."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder the user named that does not exist, or lacks a part it needs."""


class MissingExtraError(UserError, ImportError):
    """An optional part whose packages are not installed (the message has the ``pip install`` line)."""


class ConfigError(InputError):
    """A config problem, with the offending key in the message (also importable from dgpo.config)."""


class CheckpointError(InputError):
    """A checkpoint that cannot be read back: truncated, corrupt, or made for another model."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = _SHORT.maxset = 6


def short(value: object) -> str:
    """A bounded ``repr`` for messages: a huge, deep or self-referencing value stays one short line."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4000:
        return f"<an integer of {value.bit_length()} bits>"  # repr() refuses past 4,300 digits
    try:
        text = _SHORT.repr(value)
    except ValueError:  # such an integer nested in a list
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


def one_line(message: str, limit: int = 2000) -> str:
    """An error message as a single line of at most ``limit`` characters (its head and its tail)."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    if len(text) > limit:
        text = f"{text[: limit // 2 - 3]} ... {text[-(limit // 2 - 2):]}"
    return text


def user_path(value: str | Path, what: str) -> Path:
    """A path the user gave, as a Path; one the file system cannot take (a NUL character, text that is
    not Unicode) is an InputError naming ``what`` instead of a ValueError from deep in ``os``."""
    text = str(value)
    if "\x00" in text:
        raise InputError(f"{what} {short(text)}: a path cannot contain a NUL character")
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InputError(f"{what} {short(text)}: not a valid path (unpaired surrogate characters)") from None
    return Path(value)
