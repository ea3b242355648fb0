"""The reference table of every config option (docs/reference/options.md, `dgpo config options`), read from the
dataclasses of dgpo/config.py: their defaults, allowed values and help."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from dgpo.config.schema import Config


def options_markdown() -> str:
    """A markdown table of every option: key, default (the official value), allowed values, help."""
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            allowed = _allowed(hints[f.name], f.metadata)
            lines.append(f"| `{section.name}.{f.name}` | `{default!r}` | {allowed} | {f.metadata.get('help', '')} |")
    return "\n".join(lines) + "\n"


def _allowed(tp: Any, meta: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return ", ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_allowed(typing.get_args(tp)[0], meta)}"
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 2 and typing.get_origin(args[1]) is list and typing.get_args(args[1])[0] == args[0]:
            return f"{_allowed(args[0], meta)}, or a list of them"
        return " or ".join(_allowed(a, meta) for a in args)
    if meta.get("lo") is not None or meta.get("hi") is not None:
        return f"{tp.__name__} in [{meta.get('lo')}, {meta.get('hi', None) or 'inf'}]"
    return tp.__name__
