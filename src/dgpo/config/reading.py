"""YAML text to plain data for configs, safely: PyYAML's safe loader only (no tag builds an object),
nesting bounded before parsing, and every failure a :class:`~dgpo.errors.ConfigError` naming the file
or the key."""

from __future__ import annotations

from pathlib import Path

import yaml

from dgpo.errors import ConfigError, short

MAX_DEPTH = 64  # PyYAML's pure-Python scanner takes quadratic time in the nesting depth of [ and {
# what PyYAML's safe constructors raise on a value they match but cannot build (5000 digits, `!!bool maybe`,
# `!!timestamp 2001-13-45`) or on deep nesting, besides its own YAMLError: the file's fault, never ours
YAML_FAILURES = (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError, RecursionError)


def _flow_depth(text: str | bytes) -> int:
    """The deepest nesting of [ and { (an upper bound: brackets in quoted strings count too)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}" and depth:
            depth -= 1
    return deepest


def _failure(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return f"{type(e).__name__}: {short(str(e).split('; use sys')[0])}"


def read_yaml(p: Path) -> dict:
    """A config file's top-level mapping (YAML's safe loader: plain data, no tags that build objects)."""
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist (or is not a file); give the path of a YAML config")
    text = p.read_bytes()
    if _flow_depth(text) > MAX_DEPTH:
        raise ConfigError(f"config file {p}: nested more than {MAX_DEPTH} levels deep")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {_yaml_problem(e)}") from None
    except YAML_FAILURES as e:
        raise ConfigError(f"config file {p}: cannot read a value ({_failure(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping of sections (run:, train:, ...), got "
                          f"{type(data).__name__}")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where."""
    problem = getattr(e, "problem", None) or getattr(e, "context", None)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(e).split())


def set_override(data: dict, item: str) -> None:
    """``section.key=value`` into ``data``: the value read as YAML (text that is not YAML stays text)."""
    if "=" not in item:
        raise ConfigError(f"override {short(item)} must look like key=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {_key(key)}: {short(p)} is not a section")
    if _flow_depth(raw) > MAX_DEPTH:
        raise ConfigError(f"{_key(key)}: the value is nested more than {MAX_DEPTH} levels deep")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        node[parts[-1]] = raw
    except YAML_FAILURES as e:  # e.g. an integer past Python's digit limit for str -> int, `!!bool maybe`
        raise ConfigError(f"{_key(key)}: cannot read the value ({_failure(e)})") from None


def _key(key: str) -> str:
    key = key.strip()
    return key if len(key) <= 80 and key.isprintable() else short(key)
