"""The config field helper shared by every section."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def opt(default: Any, lo: float | None = None, hi: float | None = None, help: str = "") -> Any:
    """A config field with an inclusive numeric range (of each element, for lists) and a help text."""
    meta = {"lo": lo, "hi": hi, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)
