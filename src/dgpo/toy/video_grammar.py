"""Prompt grammar of the toy VIDEO world: the image toy's shapes, moving.

Every prompt is a GenEval metadata row (``tag``, ``include`` [{class, count, color?}], ``exclude``,
``prompt``) as in :mod:`dgpo.toy.grammar`, so GenEval's rule engine scores each frame, plus a
``motion`` field read by the tracker of :mod:`dgpo.toy.video_scorer`:

* a list with one direction per include clause, each in :data:`DIRECTIONS` (``left``, ``right``,
  ``up``, ``down``, ``still``); a clause of ``count`` N moves its N objects together; or
* ``"apart"`` / ``"towards"`` (:data:`RELATIVE`) for a prompt with two include clauses of one object
  each: the distance between the two objects grows / shrinks.

Categories (:data:`CATEGORIES`):

* ``motion_single``: "a video of a circle moving left";
* ``still``: "a video of a (red) circle standing still";
* ``motion_two_relative``: "a video of a circle and a square moving apart" / "... moving towards each
  other";
* ``motion_two_directions``: "a video of a circle moving left and a square moving up" (two different
  directions);
* ``motion_color``: "a video of a red circle moving left" (the colour is kept across frames);
* ``motion_count``: "a video of two (red) circles moving left" (exactly N, via ``exclude`` as in the
  image toy's counting prompts).

Splits are deterministic, as the image toy's are: ``test`` is a fixed per-category sample in which a
quarter of each category (where it has such prompts) names a held-out binding: a shape-direction pair
of :data:`HELDOUT_MOTIONS` or a colour-shape pair of the image toy's
:data:`~dgpo.toy.grammar.HELDOUT_BINDINGS`, which video pretraining never names; ``train`` (the RL
prompts) is the rest of the grammar minus the test prompts and minus every held-out binding, so the
two never share a prompt.
"""

from __future__ import annotations

import itertools

from dgpo.errors import InputError, short
from dgpo.toy.grammar import COLORS, HELDOUT_BINDINGS, SHAPES, clause, make_split, noun, sample_pretrain
from dgpo.toy.grammar import bindings as color_bindings

__all__ = ["color_bindings", "sample_pretrain"]  # shared with the image toy's grammar

DIRECTIONS = ("left", "right", "up", "down", "still")
MOVING = DIRECTIONS[:4]
RELATIVE = ("apart", "towards")
NUMBERS = {2: "two", 3: "three"}
CATEGORIES = ("motion_single", "still", "motion_two_relative", "motion_two_directions", "motion_color",
              "motion_count")
# shape-direction pairs that pretraining never names: one per shape and one per direction
HELDOUT_MOTIONS = frozenset({("circle", "up"), ("square", "left"), ("triangle", "down"), ("cross", "right")})
TEST_SIZES = {
    "motion_single": 8,
    "still": 8,
    "motion_two_relative": 8,
    "motion_two_directions": 40,
    "motion_color": 40,
    "motion_count": 40,
}
_SPLIT_SEED = 4321


def _plural(shape: str) -> str:
    return shape + ("es" if shape == "cross" else "s")


def _moving(direction: str) -> str:
    return "standing still" if direction == "still" else f"moving {direction}"


def motion_single(shape: str, direction: str) -> dict:
    return {"tag": "motion_single", "include": [clause(shape)], "motion": [direction],
            "prompt": f"a video of a {shape} {_moving(direction)}"}


def still(shape: str, color: str | None = None) -> dict:
    return {"tag": "still", "include": [clause(shape, 1, color)], "motion": ["still"],
            "prompt": f"a video of a {noun(shape, color)} standing still"}


def motion_two_relative(a: str, b: str, relation: str) -> dict:
    how = "moving apart" if relation == "apart" else "moving towards each other"
    return {"tag": "motion_two_relative", "include": [clause(a), clause(b)], "motion": relation,
            "prompt": f"a video of a {a} and a {b} {how}"}


def motion_two_directions(a: str, da: str, b: str, db: str) -> dict:
    return {"tag": "motion_two_directions", "include": [clause(a), clause(b)], "motion": [da, db],
            "prompt": f"a video of a {a} {_moving(da)} and a {b} {_moving(db)}"}


def motion_color(shape: str, color: str, direction: str) -> dict:
    return {"tag": "motion_color", "include": [clause(shape, 1, color)], "motion": [direction],
            "prompt": f"a video of a {color} {shape} {_moving(direction)}"}


def motion_count(shape: str, n: int, direction: str, color: str | None = None) -> dict:
    return {"tag": "motion_count", "include": [clause(shape, n, color)], "exclude": [clause(shape, n + 1, color)],
            "motion": [direction],
            "prompt": f"a video of {NUMBERS[n]} {noun(_plural(shape), color)} {_moving(direction)}"}


def all_prompts() -> dict[str, list[dict]]:
    """Every prompt of the grammar, by category, in a fixed order."""
    opt_colors = (None, *COLORS)
    pairs = list(itertools.permutations(SHAPES, 2))
    return {
        "motion_single": [motion_single(s, d) for s in SHAPES for d in MOVING],
        "still": [still(s, c) for s in SHAPES for c in opt_colors],
        "motion_two_relative": [motion_two_relative(a, b, r) for a, b in pairs for r in RELATIVE],
        "motion_two_directions": [motion_two_directions(a, da, b, db) for a, b in pairs
                                  for da, db in itertools.permutations(MOVING, 2)],
        "motion_color": [motion_color(s, c, d) for s in SHAPES for c in COLORS for d in MOVING],
        "motion_count": [motion_count(s, n, d, c) for s in SHAPES for n in NUMBERS for d in MOVING
                         for c in opt_colors],
    }


def motion_bindings(meta: dict) -> set[tuple[str, str]]:
    """The (shape, direction) pairs a prompt names (relative motion names none)."""
    motion = meta.get("motion")
    if not isinstance(motion, list):
        return set()
    return {(o["class"], d) for o, d in zip(meta["include"], motion)}


def has_heldout(meta: dict) -> bool:
    return bool(motion_bindings(meta) & HELDOUT_MOTIONS or color_bindings(meta) & HELDOUT_BINDINGS)


def split(name: str) -> list[dict]:
    """Deterministic prompt split: ``test`` (held-out evaluation) or ``train`` (RL prompts)."""
    return make_split(name, all_prompts(), TEST_SIZES, has_heldout, _SPLIT_SEED,
                      named=" (toy_video:train, toy_video:test)")


def pretrain_pool() -> list[dict]:
    """All prompts video pretraining may name: the grammar minus held-out bindings."""
    return [m for rows in all_prompts().values() for m in rows if not has_heldout(m)]


def check_motion(meta: dict) -> None:
    """A row's ``motion`` field as the video scorer reads it; an InputError naming the prompt."""
    where = f"toy video metadata {short(meta.get('prompt'))}"
    motion, include = meta.get("motion"), meta.get("include") or []
    if motion in RELATIVE:
        if len(include) != 2 or any(o.get("count") != 1 for o in include):
            raise InputError(f"{where}: motion {motion!r} needs two include clauses of one object each")
        return
    if not isinstance(motion, list) or len(motion) != len(include) or any(d not in DIRECTIONS for d in motion):
        raise InputError(f"{where}: 'motion' must be {list(RELATIVE)[0]!r} / {list(RELATIVE)[1]!r} or a list of one "
                         f"direction per include clause, each in {list(DIRECTIONS)}; got {short(motion)}")
