"""Prompt grammar of the toy EDITING world: an instruction, a source scene, the scene it asks for.

Every row is GenEval metadata of the edit (``tag``, ``prompt``, ``include`` / ``exclude``: what the
rule engine checks on the result) plus the two scenes, each a list of placed objects ``{"class",
"color", "box": [x, y, size]}`` (the image toy's shapes, palette and canvas; drawn by
:func:`dgpo.toy.canvas.draw`, so a row needs no image files), and ``edited``: the index in
``source_scene`` of the object the instruction names (None for ``add``; the added object is the last of
``target_scene``). Objects of a scene have distinct shapes, so "the square" names one object.

Categories (:data:`CATEGORIES`), each with its edit clauses:

* ``recolor``: "make the red circle blue" (include a blue circle, exclude a red one);
* ``move``: "move the square to the left of the triangle" (include the triangle, and the square in that
  relation to it); the source never holds the relation already;
* ``add``: "add a green circle" (include a green circle, exclude a second circle);
* ``remove``: "remove the blue square" (exclude it).

Splits are deterministic and disjoint by instruction: ``test`` is a fixed sample per category (one scene
per instruction) in which a quarter names a held-out binding, ``train`` (the RL prompts) is every other
instruction without one, with :data:`TRAIN_SCENES` scenes each. Held out (never named in pretraining):
a recolour to, an addition or a removal of a colour-shape pair of the image toy's
:data:`~dgpo.toy.grammar.HELDOUT_BINDINGS`, and a move of a shape-relation pair of :data:`HELDOUT_MOVES`.
"""

from __future__ import annotations

import functools
import itertools
import json
import random

import numpy as np

from dgpo.errors import InputError, short
from dgpo.toy.canvas import CANVAS, MAX_SIZE, MIN_SIZE, boxes_clear, draw, relation_holds
from dgpo.toy.grammar import COLORS, HELDOUT_BINDINGS, RELATIONS, SHAPES, by_category, clause, test_sample

__all__ = ["by_category"]

CATEGORIES = ("recolor", "move", "add", "remove")
# shape-relation pairs a move never names in pretraining: one per shape and one per relation
HELDOUT_MOVES = frozenset({("circle", "above"), ("square", "left of"), ("triangle", "below"),
                           ("cross", "right of")})
TEST_SIZES = {"recolor": 24, "move": 16, "add": 8, "remove": 8}
TRAIN_SCENES = 3  # scenes per training instruction
MIN_MOVE = 4.0  # px a moved object's centre travels at least (a move is never mistaken for staying put)
_SPLIT_SEED = 5678
_AXIS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}  # (axis, sign); y down
_PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def recolor(shape: str, old: str, new: str) -> dict:
    return {"tag": "recolor", "prompt": f"make the {old} {shape} {new}",
            "edit": {"class": shape, "color": old, "to": new}}


def move(shape: str, relation: str, reference: str) -> dict:
    return {"tag": "move", "prompt": f"move the {shape} {_PHRASE[relation]} the {reference}",
            "edit": {"class": shape, "relation": relation, "reference": reference}}


def add(shape: str, color: str) -> dict:
    return {"tag": "add", "prompt": f"add a {color} {shape}", "edit": {"class": shape, "color": color}}


def remove(shape: str, color: str) -> dict:
    return {"tag": "remove", "prompt": f"remove the {color} {shape}", "edit": {"class": shape, "color": color}}


def instructions() -> dict[str, list[dict]]:
    """Every instruction of the grammar (no scene yet), by category, in a fixed order."""
    return {
        "recolor": [recolor(s, a, b) for s in SHAPES for a, b in itertools.permutations(COLORS, 2)],
        "move": [move(s, r, t) for s, t in itertools.permutations(SHAPES, 2) for r in RELATIONS],
        "add": [add(s, c) for s in SHAPES for c in COLORS],
        "remove": [remove(s, c) for s in SHAPES for c in COLORS],
    }


def edit_bindings(row: dict) -> set[tuple[str, str]]:
    """The binding an instruction names: (colour, shape) of what it recolours to, adds or removes;
    (shape, relation) of a move."""
    e = row["edit"]
    if row["tag"] == "move":
        return {(e["class"], e["relation"])}
    return {(e["to"] if row["tag"] == "recolor" else e["color"], e["class"])}


def has_heldout(row: dict) -> bool:
    return bool(edit_bindings(row) & (HELDOUT_MOVES if row["tag"] == "move" else HELDOUT_BINDINGS))


def _obj(shape: str, color: str, box) -> dict:
    return {"class": shape, "color": color, "box": list(box)}


def _free_box(rng: random.Random, taken: list, size: int | None = None, ok=None) -> tuple | None:
    """A box (x, y, size) clear of ``taken`` by a pixel (and passing ``ok``), or None after 100 tries."""
    for _ in range(100):
        s = size or rng.randint(MIN_SIZE, MAX_SIZE)
        box = (rng.randint(0, CANVAS - s), rng.randint(0, CANVAS - s), s)
        if boxes_clear(box, taken) and (ok is None or ok(box)):
            return box
    return None


def _place(rng: random.Random, objs: list[tuple[str, str]]) -> list[dict] | None:
    """Objects (shape, colour) at random boxes clear of each other, in order."""
    placed: list[dict] = []
    for shape, color in objs:
        box = _free_box(rng, [tuple(o["box"]) for o in placed])
        if box is None:
            return None
        placed.append(_obj(shape, color, box))
    return placed


def _others(rng: random.Random, exclude: tuple[str, ...], k: int) -> list[tuple[str, str]]:
    """``k`` objects of distinct shapes not in ``exclude``, in random colours."""
    return [(s, rng.choice(COLORS)) for s in rng.sample([s for s in SHAPES if s not in exclude], k)]


def _centre(box) -> np.ndarray:
    return np.array([box[0] + box[2] / 2, box[1] + box[2] / 2])


def _scenes(row: dict, rng: random.Random) -> tuple[list[dict], list[dict], int | None] | None:
    """One try at (source scene, target scene, index of the edited source object); None to retry."""
    tag, e = row["tag"], row["edit"]
    if tag == "add":
        source = _place(rng, _others(rng, (e["class"],), rng.choice((1, 2))))
        box = source and _free_box(rng, [tuple(o["box"]) for o in source])
        return None if not box else (source, [*source, _obj(e["class"], e["color"], box)], None)
    if tag == "move":
        first = [(e["class"], rng.choice(COLORS)), (e["reference"], rng.choice(COLORS))]
        source = _place(rng, first + _others(rng, (e["class"], e["reference"]), rng.choice((0, 1))))
        return source and _moved(row, source, rng)
    named = [(e["class"], e["color"])] + _others(rng, (e["class"],), rng.choice((1, 2)))
    source = _place(rng, named)
    if source is None:
        return None
    if tag == "recolor":
        return source, [{**source[0], "color": e["to"]}, *source[1:]], 0
    return source, source[1:], 0


def _moved(row: dict, source: list[dict], rng: random.Random):
    """The move's target: the named object (source[0]) at a new box in the relation to the reference
    (source[1]), clear of the others, its centre at least :data:`MIN_MOVE` px from where it was."""
    rel = row["edit"]["relation"]
    obj, ref = source[0], source[1]
    if relation_holds(rel, tuple(obj["box"]), tuple(ref["box"])):
        return None  # the source must not already do what the instruction asks
    old, target, size = _centre(obj["box"]), _centre(ref["box"]), obj["box"][2]
    axis, sign = _AXIS[rel]
    along = _along(size, target[axis], sign)
    if along[0] > along[1]:
        return None  # no room on that side of the reference: another scene
    others = [tuple(o["box"]) for o in source[1:]]
    for _ in range(30):
        box = _box_towards(rng, size, target, axis, along)
        if (box is not None and np.hypot(*(_centre(box) - old)) >= MIN_MOVE and boxes_clear(box, others)
                and relation_holds(rel, box, tuple(ref["box"]))):
            return source, [_obj(obj["class"], obj["color"], box), *source[1:]], 0
    return None


def _along(size: int, t: float, sign: int) -> tuple[int, int]:
    """The range of a box's corner coordinate that puts its centre on the ``sign`` side of ``t``."""
    half = size / 2
    return (0, int(np.floor(t - half)) - 1) if sign < 0 else (int(np.ceil(t - half)) + 1, CANVAS - size)


def _box_towards(rng: random.Random, size: int, target: np.ndarray, axis: int, along: tuple[int, int]):
    """A box of ``size`` with its corner coordinate along ``axis`` in ``along``, its centre within the
    quarter-plane where that axis dominates (where GenEval's relation can hold); None if none fits."""
    a = rng.randint(*along)
    d, u = abs(a + size / 2 - target[axis]), target[1 - axis]
    lo, hi = max(0, int(np.ceil(u - d - size / 2))), min(CANVAS - size, int(np.floor(u + d - size / 2)))
    if lo > hi:
        return None
    b = rng.randint(lo, hi)
    return (a, b, size) if axis == 0 else (b, a, size)


def with_scene(row: dict, index: int = 0) -> dict:
    """The instruction ``row`` with its ``index``-th scene (deterministic: seeded by the prompt and the
    index), its edit clauses and ``edited`` (the named object is the first of the source scene)."""
    rng = random.Random(f"toy_edit/{row['prompt']}/{index}")
    for _ in range(500):
        got = _scenes(row, rng)
        if got is not None:
            break
    else:  # pragma: no cover - every instruction of the grammar places within a few tries
        raise InputError(f"the toy editing grammar could not place a scene for {row['prompt']!r}")
    source, target, edited = got
    return {**row, **edit_clauses(row, source, edited), "source_scene": source, "target_scene": target,
            "edited": edited}


def edit_clauses(row: dict, source: list[dict], edited: int | None) -> dict:
    """GenEval's ``include`` / ``exclude`` of the edit (see the module docstring)."""
    e, tag = row["edit"], row["tag"]
    if tag == "recolor":
        return {"include": [clause(e["class"], 1, e["to"])], "exclude": [clause(e["class"], 1, e["color"])]}
    if tag == "move":
        ref = next(o for o in source if o["class"] == e["reference"])
        color = source[edited]["color"]
        return {"include": [clause(ref["class"], 1, ref["color"]), clause(e["class"], 1, color, (e["relation"], 0))],
                "exclude": []}
    if tag == "add":
        return {"include": [clause(e["class"], 1, e["color"])], "exclude": [clause(e["class"], 2)]}
    return {"include": [], "exclude": [clause(e["class"], 1, e["color"])]}


@functools.lru_cache(maxsize=4)
def _split_json(name: str) -> str:
    rows = {cat: [with_scene(m) for m in ms] for cat, ms in instructions().items()}
    test = test_sample(rows, TEST_SIZES, has_heldout, _SPLIT_SEED)
    if name == "test":
        return json.dumps(test)
    taken = {m["prompt"] for m in test}
    return json.dumps([with_scene(m, k) for ms in instructions().values() for m in ms
                       if m["prompt"] not in taken and not has_heldout(m) for k in range(TRAIN_SCENES)])


def split(name: str) -> list[dict]:
    """Deterministic split: ``test`` (held-out evaluation) or ``train`` (RL prompts); fresh copies."""
    if name not in ("train", "test"):
        raise InputError(f"unknown split {name!r}; allowed: 'train', 'test' (toy_edit:train, toy_edit:test)")
    return json.loads(_split_json(name))


def pretrain_pool() -> list[dict]:
    """The instructions pretraining may name (no scenes: each draw places its own): all minus held-out."""
    return [m for ms in instructions().values() for m in ms if not has_heldout(m)]


def sample_pretrain(rng: random.Random, by_cat: dict, weights: dict | None = None) -> dict:
    """A pretraining edit: a category (uniform, or by ``weights``), an instruction uniform within it, and a
    fresh scene drawn from ``rng``."""
    cats = sorted(by_cat)
    cat = rng.choices(cats, [weights.get(c, 1.0) for c in cats])[0] if weights else rng.choice(cats)
    row = rng.choice(by_cat[cat])
    return with_scene(row, rng.getrandbits(64))


def render_scene(scene: list[dict]) -> np.ndarray:
    """Float32 image [3, CANVAS, CANVAS] in [0, 1] of a scene (checked: :func:`check_scene`)."""
    check_scene(scene)
    return draw([(o["class"], o["color"], tuple(o["box"])) for o in scene])


def check_scene(scene, where: str = "toy edit scene") -> None:
    """A scene as the renderer and the scorer read it; an InputError naming what is wrong."""
    if not isinstance(scene, list) or len(scene) > 12:
        raise InputError(f"{where}: a scene is a list of at most 12 objects, got {short(scene)}")
    for i, o in enumerate(scene):
        box = o.get("box") if isinstance(o, dict) else None
        if not isinstance(o, dict) or o.get("class") not in SHAPES or o.get("color") not in COLORS:
            raise InputError(f"{where}: object {i} needs 'class' in {list(SHAPES)} and 'color' in {list(COLORS)}, "
                             f"got {short(o)}")
        ints = isinstance(box, list) and len(box) == 3 and all(type(v) is int for v in box)
        if not ints or not (1 <= box[2] <= CANVAS and all(0 <= v <= CANVAS - box[2] for v in box[:2])):
            raise InputError(f"{where}: object {i} 'box' must be [x, y, size] integers inside the {CANVAS} px canvas, "
                             f"got {short(box)}")


def check_edit_row(row: dict) -> None:
    """A toy editing row: its scenes and ``edited`` index; an InputError naming the prompt."""
    where = f"toy edit row {short(row.get('prompt'))}"
    for key in ("source_scene", "target_scene"):
        if key not in row:
            raise InputError(f"{where}: needs '{key}' (rows of toy_edit:train / toy_edit:test carry their scenes)")
        check_scene(row[key], f"{where}: {key}")
    edited = row.get("edited")
    if edited is not None and not (type(edited) is int and 0 <= edited < len(row["source_scene"])):
        raise InputError(f"{where}: 'edited' must be null or an index into source_scene, got {short(edited)}")
