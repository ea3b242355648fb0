"""Prompt grammar of the `shapes` toy world: a miniature of GenEval.

Every prompt comes with GenEval's metadata (``tag``, ``include`` [{class, count, color?, position?}],
``exclude``, ``prompt``), so the same scorer reads the toy world and GenEval-style files.

Splits are deterministic:

* ``test``: a fixed per-category sample (>= 300 prompts). It contains every colour-shape binding in
  :data:`HELDOUT_BINDINGS`, which pretraining never names, as GenEval tests unseen combinations.
* ``train``: the RL training prompts; the rest of the grammar for counting / position / color_attr,
  minus the test prompts and minus held-out bindings (so train and test never share a prompt).
* Pretraining draws random metadata from the whole grammar except the held-out bindings.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from dgpo.errors import InputError

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "white")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {2: "two", 3: "three", 4: "four"}
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
HELDOUT_BINDINGS = frozenset(
    {("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square")}
)
TEST_SIZES = {
    "single_object": 4,
    "two_object": 12,
    "colors": 24,
    "counting": 40,
    "position": 120,
    "color_attr": 120,
}
_SPLIT_SEED = 1234


def noun(shape: str, color: str | None) -> str:
    return f"{color} {shape}" if color else shape


def clause(shape: str, count: int = 1, color: str | None = None, position=None) -> dict:
    d: dict = {"class": shape, "count": count}
    if color:
        d["color"] = color
    if position:
        d["position"] = list(position)
    return d


def single_object(shape: str) -> dict:
    return {"tag": "single_object", "include": [clause(shape)], "prompt": f"a photo of a {shape}"}


def two_object(a: str, b: str) -> dict:
    return {
        "tag": "two_object",
        "include": [clause(a), clause(b)],
        "prompt": f"a photo of a {a} and a {b}",
    }


def counting(shape: str, n: int, color: str | None = None) -> dict:
    return {
        "tag": "counting",
        "include": [clause(shape, n, color)],
        "exclude": [clause(shape, n + 1, color)],
        "prompt": f"a photo of {NUMBERS[n]} {noun(shape, color)}{'es' if shape == 'cross' else 's'}",
    }


def colors(shape: str, color: str) -> dict:
    return {
        "tag": "colors",
        "include": [clause(shape, 1, color)],
        "prompt": f"a photo of a {color} {shape}",
    }


def position(b: str, rel: str, a: str, cb: str | None = None, ca: str | None = None) -> dict:
    """"a photo of a B <rel> a A": B is placed relative to A (GenEval's order)."""
    return {
        "tag": "position",
        "include": [clause(a, 1, ca), clause(b, 1, cb, (rel, 0))],
        "prompt": f"a photo of a {noun(b, cb)} {rel} a {noun(a, ca)}",
    }


def color_attr(a: str, ca: str, b: str, cb: str) -> dict:
    return {
        "tag": "color_attr",
        "include": [clause(a, 1, ca), clause(b, 1, cb)],
        "prompt": f"a photo of a {ca} {a} and a {cb} {b}",
    }


def all_prompts() -> dict[str, list[dict]]:
    """Every prompt of the grammar, by category, in a fixed order."""
    opt_colors = (None, *COLORS)
    pairs = [(a, b) for a, b in itertools.permutations(SHAPES, 2)]
    return {
        "single_object": [single_object(s) for s in SHAPES],
        "two_object": [two_object(a, b) for a, b in pairs],
        "counting": [counting(s, n, c) for s in SHAPES for n in NUMBERS for c in opt_colors],
        "colors": [colors(s, c) for s in SHAPES for c in COLORS],
        "position": [
            position(b, r, a, cb, ca)
            for a, b in pairs
            for r in RELATIONS
            for ca in opt_colors
            for cb in opt_colors
        ],
        "color_attr": [
            color_attr(a, ca, b, cb)
            for a, b in pairs
            for ca, cb in itertools.permutations(COLORS, 2)
        ],
    }


def bindings(meta: dict) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a prompt names."""
    return {(o["color"], o["class"]) for o in meta["include"] if "color" in o}


def has_heldout(meta: dict) -> bool:
    return bool(bindings(meta) & HELDOUT_BINDINGS)


def test_sample(all_rows: dict[str, list[dict]], sizes: dict[str, int], heldout, seed: int) -> list[dict]:
    """A world's held-out split: a fixed sample of ``sizes[cat]`` rows per category (all of a smaller
    one), a quarter of each drawn from the rows that name a held-out binding (``heldout(row)``)."""
    rng = random.Random(seed)
    out: list[dict] = []
    for cat, rows in all_rows.items():
        n = sizes[cat]
        if n >= len(rows):
            out.extend(rows)
            continue
        held = [m for m in rows if heldout(m)]
        rest = [m for m in rows if not heldout(m)]
        k_held = min(len(held), n // 4)  # a quarter of the sample probes unseen bindings
        picked = rng.sample(held, k_held) + rng.sample(rest, n - k_held)
        out.extend(sorted(picked, key=rows.index))
    return out


def make_split(name: str, all_rows: dict[str, list[dict]], sizes: dict[str, int], heldout, seed: int,
               train_categories=None, named: str = "") -> list[dict]:
    """``test``: :func:`test_sample`; ``train``: the rows of ``train_categories`` (default: all) that
    neither share a prompt with the test split nor name a held-out binding."""
    if name == "test":
        return test_sample(all_rows, sizes, heldout, seed)
    if name == "train":
        test = {m["prompt"] for m in test_sample(all_rows, sizes, heldout, seed)}
        return [m for cat in (train_categories or all_rows) for m in all_rows[cat]
                if m["prompt"] not in test and not heldout(m)]
    raise InputError(f"unknown split {name!r}; allowed: 'train', 'test'{named}")


def split(name: str) -> list[dict]:
    """Deterministic prompt split: ``test`` (held-out evaluation) or ``train`` (RL prompts)."""
    return make_split(name, all_prompts(), TEST_SIZES, has_heldout, _SPLIT_SEED,
                      ("counting", "position", "color_attr"))


def pretrain_pool() -> list[dict]:
    """All prompts pretraining may name: the grammar minus held-out bindings."""
    return [m for rows in all_prompts().values() for m in rows if not has_heldout(m)]


def by_category(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for m in rows:
        out.setdefault(m.get("tag", ""), []).append(m)
    return out


def sample_pretrain(
    rng: random.Random, pool: list[dict], by_cat: dict | None = None, weights: dict | None = None
) -> dict:
    """A pretraining caption: a category (uniform, or by ``weights``), then a prompt uniform within it."""
    by_cat = by_cat if by_cat is not None else by_category(pool)
    cats = sorted(by_cat)
    cat = rng.choices(cats, [weights.get(c, 1.0) for c in cats])[0] if weights else rng.choice(cats)
    return rng.choice(by_cat[cat])


def read_utf8(path: str | Path) -> str:
    """A text file's contents; a file that is not UTF-8 raises a ValueError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                         f"save the file as UTF-8") from None


def read_jsonl(path: str | Path, check=None) -> list[dict]:
    """Read a GenEval-format metadata file, with a clear error naming the bad line; ``check(row)``
    validates each row further (raising an InputError, which gets the line number)."""
    rows = []
    for i, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno}); write one JSON "
                             "object per line") from None
        except (ValueError, RecursionError) as e:  # a number past Python's digit limit, deep nesting
            raise InputError(f"{path}:{i}: not valid JSON ({type(e).__name__}); write one JSON object per "
                             "line") from None
        if not isinstance(row, dict) or "prompt" not in row or "include" not in row:
            raise InputError(f"{path}:{i}: a row needs 'prompt' and 'include' keys (GenEval's metadata format)")
        if check is not None:
            try:
                check(row)
            except InputError as e:
                raise InputError(f"{path}:{i}: {e}") from None
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no prompts; write one GenEval metadata object per line")
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
