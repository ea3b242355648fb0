"""The toy worlds' canvas: its size, palette and shapes, where boxes may go, and drawing placed objects.

Objects are flat-coloured shapes on a black canvas; placed objects never touch (a one-pixel gap), so
connected components recover them exactly. A box is (x, y, size): the top-left pixel and the side.
"""

from __future__ import annotations

import numpy as np

from dgpo.toy.grammar import COLORS

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


def boxes_clear(box, boxes, gap: int = 1) -> bool:
    """Whether ``box`` keeps ``gap`` pixels from every one of ``boxes``."""
    x0, y0, s = box
    for bx, by, bs in boxes:
        if x0 < bx + bs + gap and bx < x0 + s + gap and y0 < by + bs + gap and by < y0 + s + gap:
            return False
    return True


def relation_holds(rel: str, box_b, box_a) -> bool:
    """Whether box B stands in GenEval's relation ``rel`` to box A (the scorer's own rule)."""
    from dgpo.rewards.geneval.rules import relative_position  # the scorer's relations (GenEval's rules)

    return rel in relative_position(xyxy(box_b), xyxy(box_a))


def xyxy(box) -> tuple[float, float, float, float]:
    """(x, y, size) as GenEval's (x0, y0, x1, y1)."""
    x, y, s = box
    return (x, y, x + s, y + s)


def draw(plan: list[tuple[str, str, tuple[int, int, int]]]) -> np.ndarray:
    """Float32 image [3, CANVAS, CANVAS] of placed objects: (shape, colour, (x, y, size)) each."""
    img = np.zeros((3, CANVAS, CANVAS), np.float32)
    for shape, color, (x, y, s) in plan:
        m = shape_mask(shape, s)
        for ch, v in enumerate(PALETTE[color]):
            img[ch, y : y + s, x : x + s][m] = v
    return img
