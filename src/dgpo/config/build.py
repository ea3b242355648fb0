"""Plain data (YAML, overrides) to the typed config dataclasses, strictly: an unknown key, a wrong type, an
out-of-range value or text a file cannot hold is a :class:`~dgpo.errors.ConfigError` naming the full key."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from dgpo.errors import ConfigError, short

INT_MAX = 2**63 - 1  # torch's seeds, sizes and counts are 64-bit


def check_value(key: str, tp: Any, value: Any, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if isinstance(value, bool) and all(isinstance(a, str) for a in typing.get_args(tp)):
            value = "yes" if value else "no"  # YAML 1.1 reads a bare no/yes as a boolean
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {short(value)} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {short(value)}")
        inner = typing.get_args(tp)[0]
        return [check_value(f"{key}[{i}]", inner, v, meta) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        # a scalar or a list of them (e.g. one reward name or several): the branch that fits the value
        fits = [a for a in args if (typing.get_origin(a) is list) == isinstance(value, list)]
        return check_value(key, (fits or args)[0], value, meta)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            digits = str(value)
            raise ConfigError(f"{key}: {digits[:20]}... ({len(digits)} digits) is too large for a float") from None
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    if tp is bool and not isinstance(value, bool) or not isinstance(value, tp) or (
        tp is int and isinstance(value, bool)
    ):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {short(value)}")
    if tp is int and abs(value) > INT_MAX:
        raise ConfigError(f"{key}: {short(value)} is too large (at most 2**63 - 1)")
    if tp is str:
        check_text(key, value)
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{key}: {value!r} is out of range [{lo}, {'inf' if hi is None else hi}]")
    return value


def check_text(key: str, value: str) -> None:
    """A string option must be text that a file, a log and a YAML dump can hold."""
    if "\x00" in value:
        raise ConfigError(f"{key}: {short(value)} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"{key}: {short(value)} is not valid Unicode text ({e.reason} at {e.start})") from None


def build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}{unknown[0]}" if isinstance(unknown[0], str) else f"{prefix}{short(unknown[0])}"
        raise ConfigError(f"unknown key {short(key)}; allowed under {prefix or 'top level'}: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = check_value(f"{prefix}{name}", tp, value, dict(fields[name].metadata))
    return cls(**kwargs)
