"""Hypothesis strategies shared by the fuzz targets: hostile JSON / YAML values, mutations of JSON
documents and of bytes, and the payloads that would run code if a loader ever deserialised objects."""

from __future__ import annotations

import json
import math

from hypothesis import strategies as st

MARKER_NAME = "EXECUTED"  # a loader that runs a payload creates this file: the fuzzer counts a crash

HUGE_INT = 10**5000  # past Python's 4,300-digit str <-> int limit

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 2**63, -(2**63)]),
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324, -0.0]),
    st.text(max_size=20), st.text(st.characters(codec="utf-8"), max_size=12),
    st.sampled_from(["", " ", "\x00", "\udcff", "\ud800", "é", "日本", "🙂", "a\nb", "\t", "../../etc", "null"]),
)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                        max_size=4), max_leaves=8)


def json_text(value) -> str:
    """JSON the way a careless writer would: NaN and Infinity allowed, unpaired surrogates kept."""
    try:
        return json.dumps(value, allow_nan=True)
    except ValueError:  # an integer past the digit limit
        return '{"x": ' + "9" * 5000 + "}"


def deep(depth: int, kind: str = "list") -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


raw_json_lines = st.one_of(
    st.builds(deep, st.sampled_from([50, 1_000, 100_000]), st.sampled_from(["list", "dict"])),
    st.sampled_from(['{"prompt": "a", "include": [', "{'prompt': 'single quotes'}", "NaN", "[]", "{}", "\ufeff{}",
                     '{"count": ' + "9" * 5000 + "}", '{"count": 1e400}', '{"prompt": "\\ud800", "include": []}',
                     '{"a": 1, "a": 2, "include": [], "prompt": "dup"}', "\x00", "null"]),
)


# ---------------------------------------------------------------------------- mutations of JSON docs
json_mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), json_values),
    st.tuples(st.just("set"), st.integers(0, 10**6),
              st.sampled_from([HUGE_INT, -1, 0, 2**64, 1e30, "1", [], {}, None])),
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("whole"), json_values),
    st.tuples(st.just("raw"), raw_json_lines),
)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def mutate_json(doc, mutation) -> str:
    """The text of ``doc`` with one mutation: a value anywhere replaced or deleted, the whole document
    replaced, or a raw line instead."""
    import copy

    op = mutation[0]
    if op == "whole":
        return json_text(mutation[1])
    if op == "raw":
        return mutation[1]
    doc = copy.deepcopy(doc)
    paths = [p for p in _paths(doc) if p]
    if not paths:
        return json_text(doc)
    path = paths[mutation[1] % len(paths)]
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if op == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = mutation[2]
    return json_text(doc)


# ---------------------------------------------------------------------------- mutations of bytes
byte_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("random"), st.binary(max_size=3000)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just("prefix_len"), st.sampled_from([0, 1, 2**31, 2**63, 2**64 - 1, 100_000_000])),
    st.just(("empty",)),
)


def mutate_bytes(data: bytes, mutation) -> bytes:
    op = mutation[0]
    if op == "truncate":
        return data[: int(len(data) * mutation[1])]
    if op == "flip":
        out = bytearray(data)
        for where, xor in mutation[1]:
            if out:
                out[min(int(where * len(out)), len(out) - 1)] ^= xor
        return bytes(out)
    if op == "random":
        return mutation[1]
    if op == "append":
        return data + mutation[1]
    if op == "prefix_len":  # safetensors starts with its header's length (u64, little-endian)
        return mutation[1].to_bytes(8, "little") + data[8:]
    return b""


# ---------------------------------------------------------------------------- payloads that would run code
def yaml_payloads(marker: str) -> list[str]:
    cmd = f"touch {marker}"
    return [f"!!python/object/apply:os.system [{cmd!r}]", f"!!python/object/new:os.system [{cmd!r}]",
            "!!python/name:os.system", f"!!python/object/apply:subprocess.call [[touch, {marker!r}]]",
            "!!python/module:os", "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [a: 1, b: 2]",
            "!!timestamp 2001-13-45", "!!int abc", "!!float xyz", "!foo bar", "!<tag:yaml.org,2002:str> 5",
            "!!map [1]", "!!str", "!!null x", "!!bool maybe", "2001-12-14 21:59:43.10 -5"]


def pickle_payload(marker: str) -> bytes:
    """A pickle whose loading runs ``open(marker, "w")`` (what a pickled LoRA or checkpoint could do)."""
    import pickle

    class Boom:
        def __reduce__(self):
            return (open, (marker, "w"))

    return pickle.dumps({"weights": Boom()})
