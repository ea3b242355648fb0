"""Renderer of the `shapes` world: draws an image that satisfies a prompt's GenEval metadata.

Objects are flat-coloured shapes on a black canvas, with random sizes and placement; they never
touch (a one-pixel gap), so connected components recover them exactly.
"""

from __future__ import annotations

import random

import numpy as np

from dgpo.errors import InputError, short
from dgpo.toy.canvas import CANVAS, MAX_SIZE, MIN_SIZE, PALETTE, boxes_clear, draw, relation_holds, shape_mask
from dgpo.toy.grammar import COLORS, SHAPES

# the canvas and its drawing live in dgpo.toy.canvas (the editing world draws scenes without metadata)
__all__ = ["CANVAS", "MAX_OBJECTS", "MAX_SIZE", "MIN_SIZE", "PALETTE", "draw", "render", "shape_mask"]


def _plan(meta: dict, rng: random.Random) -> list[tuple[str, str, tuple[int, int, int]]] | None:
    """One try at placing every object; None if it failed (caller retries)."""
    placed: list[tuple[str, str, tuple[int, int, int]]] = []
    group_boxes: list[list] = []
    for req in meta["include"]:
        boxes = []
        for _ in range(req["count"]):
            color = req.get("color") or rng.choice(COLORS)
            for _try in range(50):
                s = rng.randint(MIN_SIZE, MAX_SIZE)
                box = (rng.randint(0, CANVAS - s), rng.randint(0, CANVAS - s), s)
                if not boxes_clear(box, [p[2] for p in placed]):
                    continue
                if "position" in req:
                    rel, target = req["position"]
                    if not all(relation_holds(rel, box, t) for t in group_boxes[target]):
                        continue
                break
            else:
                return None
            placed.append((req["class"], color, box))
            boxes.append(box)
        group_boxes.append(boxes)
    return placed


MAX_OBJECTS = 12


def _check_drawable(meta: dict) -> None:
    """The oracle (``--model oracle``) draws toy-world metadata only: its shapes and colours, few objects."""
    from dgpo.data.prompts import check_row

    check_row(meta)
    where = f"the toy renderer (--model oracle) cannot draw {short(meta['prompt'])}"
    for req in meta["include"]:
        if req["class"] not in SHAPES or req.get("color", "red") not in PALETTE:
            raise InputError(f"{where}: {short(req['class'])} / {short(req.get('color'))} is not a toy shape / "
                             f"colour ({list(SHAPES)}, {list(PALETTE)}); evaluate a model on such prompts instead")
    if sum(req["count"] for req in meta["include"]) > MAX_OBJECTS:
        raise InputError(f"{where}: more than {MAX_OBJECTS} objects")


def render(meta: dict, rng: random.Random) -> np.ndarray:
    """Float32 image [3, CANVAS, CANVAS] in [0, 1] satisfying ``meta``'s include clauses.

    Exclude clauses hold by construction: exactly ``count`` objects are drawn per include clause.
    """
    _check_drawable(meta)
    for _ in range(200):
        plan = _plan(meta, rng)
        if plan is not None:
            break
    else:
        raise InputError(f"the toy renderer could not place the objects of {short(meta['prompt'])}; "
                         "the oracle draws at most a few objects per image")
    return draw(plan)
