"""GenEval-style training prompts, disjoint from GenEval's 553 test prompts.

The six prompt families of GenEval's ``prompts/create_prompts.py`` over its 80 COCO object names,
with its templates ("a"/"an" by the first letter, plural "+es" after a final s, else "+s"), its
metadata rows (``tag``, ``include``, ``exclude``, ``prompt``) and its rules: counts 2 to 4 with an
exclude clause at count + 1, no colour on "person", two distinct classes (and two distinct colours)
per pair. GenEval draws each family uniformly over these combinations; here each family's
combinations are enumerated and shuffled with a seeded generator, which draws from the same
uniform distribution without repeats.

Disjointness from the test set is semantic, not just textual: "A and B" equals "B and A" (two_object,
color_attr) and "A left of B" equals "B right of A" (likewise above / below). A combination equal
to a test prompt is never drawn, and two drawn prompts are never equal either.

The mix follows Flow-GRPO's training set (reused by DGPO), whose paper gives the task ratio
position : counting : color_attr : colors : two_object : single_object = 7 : 5 : 3 : 1 : 1 : 0
(every single-object prompt is a test prompt). A family with fewer fresh combinations than its
share (counting: 160) repeats them, in a new shuffled order each pass, as Flow-GRPO's file does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from dgpo.errors import InputError

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBERS = {2: "two", 3: "three", 4: "four"}
FLOW_GRPO_RATIO = {"position": 7, "counting": 5, "color_attr": 3, "colors": 1, "two_object": 1,
                   "single_object": 0}
DEFAULT_SEED = 2026
DEFAULT_SIZE = 5000


def with_article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def plural(name: str) -> str:
    return f"{name}es" if name.endswith("s") else f"{name}s"


def _obj(cls: str, count: int = 1, color: str | None = None, position=None) -> dict:
    d: dict = {"class": cls, "count": count}
    if color:
        d["color"] = color
    if position:
        d["position"] = list(position)
    return d


def single_object(a: str) -> dict:
    return {"tag": "single_object", "include": [_obj(a)], "prompt": f"a photo of {with_article(a)}"}


def two_object(a: str, b: str) -> dict:
    return {"tag": "two_object", "include": [_obj(a), _obj(b)],
            "prompt": f"a photo of {with_article(a)} and {with_article(b)}"}


def counting(a: str, n: int) -> dict:
    return {"tag": "counting", "include": [_obj(a, n)], "exclude": [_obj(a, n + 1)],
            "prompt": f"a photo of {NUMBERS[n]} {plural(a)}"}


def colors(a: str, color: str) -> dict:
    return {"tag": "colors", "include": [_obj(a, 1, color)],
            "prompt": f"a photo of {with_article(color)} {a}"}


def position(a: str, rel: str, b: str) -> dict:
    """"a photo of A <rel> B": B is include[0], A carries ``position: [rel, 0]`` (GenEval's order)."""
    return {"tag": "position", "include": [_obj(b), _obj(a, 1, None, (rel, 0))],
            "prompt": f"a photo of {with_article(a)} {rel} {with_article(b)}"}


def color_attr(a: str, ca: str, b: str, cb: str) -> dict:
    return {"tag": "color_attr", "include": [_obj(a, 1, ca), _obj(b, 1, cb)],
            "prompt": f"a photo of {with_article(ca)} {a} and {with_article(cb)} {b}"}


def _pair(i: int, items: list) -> tuple:
    """The i-th ordered pair of two distinct items."""
    a, r = divmod(i, len(items) - 1)
    return items[a], items[r if r < a else r + 1]


def space(tag: str, names: list[str]) -> tuple[int, Callable[[int], dict]]:
    """(size, i -> row): every prompt of one family, indexed (GenEval draws uniformly among them)."""
    n_pairs = len(names) * (len(names) - 1)
    coloured = [n for n in names if n != "person"]  # GenEval: no "[colour] person" prompts
    n_cpairs, n_colours = len(coloured) * (len(coloured) - 1), len(COLORS) * (len(COLORS) - 1)
    spaces = {
        "single_object": (len(names), lambda i: single_object(names[i])),
        "two_object": (n_pairs, lambda i: two_object(*_pair(i, names))),
        "counting": (3 * len(names), lambda i: counting(names[i // 3], 2 + i % 3)),
        "colors": (len(COLORS) * len(coloured),
                   lambda i: colors(coloured[i // len(COLORS)], COLORS[i % len(COLORS)])),
        "position": (4 * n_pairs, lambda i: _position(_pair(i // 4, names), RELATIONS[i % 4])),
        "color_attr": (n_cpairs * n_colours, lambda i: _color_attr(_pair(i // n_colours, coloured),
                                                                  _pair(i % n_colours, list(COLORS)))),
    }
    if tag not in spaces:
        raise ValueError(f"unknown GenEval tag {tag!r}; allowed: {TAGS}")
    return spaces[tag]


def _position(pair: tuple, rel: str) -> dict:
    return position(pair[0], rel, pair[1])


def _color_attr(pair: tuple, cols: tuple) -> dict:
    return color_attr(pair[0], cols[0], pair[1], cols[1])


def key(row: dict) -> tuple:
    """What a prompt asks for, up to the order of an "and" and the direction of a relation."""
    inc = [(c["class"], c["count"], c.get("color")) for c in row["include"]]
    if row["tag"] == "position":
        (b, *_), (a, *_) = inc
        rel = row["include"][1]["position"][0]
        return ("position", min((a, rel, b), (b, INVERSE[rel], a)))
    return (row["tag"], frozenset(inc))


class _Rng:
    """A seeded generator built on ``random.Random.random`` alone, whose sequence Python keeps
    stable across versions (``shuffle`` and ``sample`` are not guaranteed to)."""

    def __init__(self, seed: int):
        import random

        self._r = random.Random(seed)

    def permutation(self, size: int) -> Iterator[int]:
        """range(size) in a uniformly random order, lazily (Fisher-Yates)."""
        xs = list(range(size))
        for i in range(size):
            j = i + int(self._r.random() * (size - i))
            xs[i], xs[j] = xs[j], xs[i]
            yield xs[i]

    def shuffle(self, xs: list) -> list:
        return [xs[i] for i in self.permutation(len(xs))]


def _draw(size: int, make: Callable[[int], dict], n: int, taken: set, rng: _Rng) -> list[dict]:
    """``n`` rows drawn without repeats and outside ``taken``; once every fresh row is drawn, the
    fresh rows again in new random orders."""
    out: list[dict] = []
    seen = set(taken)
    for i in rng.permutation(size):
        if len(out) == n:
            return out
        row = make(i)
        if key(row) not in seen:
            seen.add(key(row))
            out.append(row)
    pool = list(out)
    while len(out) < n and pool:
        out += rng.shuffle(pool)[: n - len(out)]
    return out


def _shares(total: int, ratio: dict[str, int]) -> dict[str, int]:
    """Largest-remainder split of ``total`` by ``ratio`` (ties: the order of ``ratio``)."""
    weight = sum(ratio.values())
    exact = {t: total * w / weight for t, w in ratio.items()}
    out = {t: int(v) for t, v in exact.items()}
    for t in sorted(ratio, key=lambda t: -(exact[t] - out[t]))[: total - sum(out.values())]:
        out[t] += 1
    return out


def train_prompts(names: list[str], test: list[dict], seed: int = DEFAULT_SEED, size: int = DEFAULT_SIZE,
                  ratio: dict[str, int] | None = None) -> list[dict]:
    """``size`` GenEval-format rows, mixed by ``ratio`` (Flow-GRPO's by default), none equal to a
    ``test`` row, shuffled; a deterministic function of the arguments."""
    ratio = FLOW_GRPO_RATIO if ratio is None else ratio
    bad = set(ratio) - set(TAGS)
    if bad or size < 1 or any(w < 0 for w in ratio.values()) or not sum(ratio.values()):
        raise InputError(f"bad prompt mix: size {size}, ratio {ratio} (tags in {TAGS}, weights >= 0)")
    rng = _Rng(seed)
    taken = {key(r) for r in test}
    rows: list[dict] = []
    for tag, n in _shares(size, ratio).items():
        drawn = _draw(*space(tag, names), n, taken, rng) if n else []
        if n and not drawn:
            raise ValueError(f"no {tag} prompt is left once the test prompts are removed")
        rows += drawn
    return rng.shuffle(rows)


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))

