"""Renderer of the `shapes` world: draws an image that satisfies a prompt's GenEval metadata.

Objects are flat-coloured shapes on a black canvas, with random sizes and placement; they never
touch (a one-pixel gap), so connected components recover them exactly.
"""

from __future__ import annotations

import random

import numpy as np

from dgpo.errors import InputError, short
from dgpo.toy.grammar import COLORS, SHAPES

CANVAS = 32
MIN_SIZE, MAX_SIZE = 7, 11
PALETTE = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "purple": (1.0, 0.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}
assert tuple(PALETTE) == COLORS


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean [size, size] mask of a shape filling its bounding box."""
    c = (np.arange(size) + 0.5) / size  # pixel centres in (0, 1)
    y, x = np.meshgrid(c, c, indexing="ij")
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "circle":
        return (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25 + 0.5 / size**2
    if shape == "triangle":  # apex up, base at the bottom
        return np.abs(x - 0.5) <= y / 2 + 0.5 / size
    if shape == "cross":  # plus sign, arms about one third thick, centred on whole pixels
        k = size // 3 + (size - size // 3) % 2
        arm = np.zeros(size, bool)
        arm[(size - k) // 2 : (size - k) // 2 + k] = True
        return arm[None, :] | arm[:, None]
    raise ValueError(f"unknown shape {shape!r}")


def _boxes_clear(box, boxes, gap: int = 1) -> bool:
    x0, y0, s = box
    for bx, by, bs in boxes:
        if x0 < bx + bs + gap and bx < x0 + s + gap and y0 < by + bs + gap and by < y0 + s + gap:
            return False
    return True


def _relation_holds(rel: str, box_b, box_a) -> bool:
    from dgpo.rewards.geneval.rules import relative_position  # the scorer's relations (GenEval's rules)

    return rel in relative_position(_xyxy(box_b), _xyxy(box_a))


def _xyxy(box) -> tuple[float, float, float, float]:
    x, y, s = box
    return (x, y, x + s, y + s)


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
                if not _boxes_clear(box, [p[2] for p in placed]):
                    continue
                if "position" in req:
                    rel, target = req["position"]
                    if not all(_relation_holds(rel, box, t) for t in group_boxes[target]):
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
    img = np.zeros((3, CANVAS, CANVAS), np.float32)
    for shape, color, (x, y, s) in plan:
        m = shape_mask(shape, s)
        for ch, v in enumerate(PALETTE[color]):
            img[ch, y : y + s, x : x + s][m] = v
    return img
