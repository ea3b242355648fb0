"""Renderer of the toy VIDEO world: clips of the image toy's shapes moving.

A clip is float32 [F, 3, CANVAS, CANVAS] in [0, 1] (F = :data:`FRAMES` = 9 by default). Frame 0 is
a scene as the image toy's renderer draws it (the same shapes, sizes 7-11 px, palette and black
canvas: :func:`dgpo.toy.render.shape_mask`); then every object moves a fixed number of pixels per
frame (the clip's speed, 1 or 2 px, drawn per clip) in its direction (``still``: not at all), and
``apart`` / ``towards`` move the two objects in opposite directions along one axis (drawn per clip),
away from / towards each other. Every object stays inside the canvas and clear of every other object (a
one-pixel gap) in every frame, so the detector recovers each frame exactly; placement is seeded
(``rng``) and rejection-sampled until the planned paths pass the scorer's own motion checks.
"""

from __future__ import annotations

import random

import numpy as np

from dgpo.errors import InputError, short
from dgpo.toy.grammar import COLORS
from dgpo.toy.render import CANVAS, MAX_SIZE, MIN_SIZE, PALETTE, _check_drawable, shape_mask
from dgpo.toy.video_grammar import RELATIVE, check_motion

FRAMES = 9
SPEEDS = (1, 2)
_VEL = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}

# one planned object: shape, colour, size, start x, start y, velocity x, velocity y (px per frame)
Obj = tuple[str, str, int, int, int, int, int]


def _clear(a: Obj, b: Obj, frames: int, gap: int = 1) -> bool:
    """Whether two moving boxes keep at least ``gap`` pixels apart in every frame."""
    for f in range(frames):
        ax, ay, bx, by = a[3] + a[5] * f, a[4] + a[6] * f, b[3] + b[5] * f, b[4] + b[6] * f
        if ax < bx + b[2] + gap and bx < ax + a[2] + gap and ay < by + b[2] + gap and by < ay + a[2] + gap:
            return False
    return True


def _start_range(v: int, size: int, frames: int) -> tuple[int, int]:
    """Start coordinates that keep an object of ``size`` moving ``v`` px per frame inside the canvas."""
    travel = v * (frames - 1)
    return max(0, -travel), CANVAS - size - max(0, travel)


def _plan_directions(meta: dict, rng: random.Random, frames: int, speed: int) -> list[Obj] | None:
    placed: list[Obj] = []
    for req, direction in zip(meta["include"], meta["motion"]):
        ux, uy = _VEL[direction]
        vx, vy = ux * speed, uy * speed
        for _ in range(req["count"]):
            color = req.get("color") or rng.choice(COLORS)
            for _try in range(50):
                s = rng.randint(MIN_SIZE, MAX_SIZE)
                (x_lo, x_hi), (y_lo, y_hi) = _start_range(vx, s, frames), _start_range(vy, s, frames)
                if x_lo > x_hi or y_lo > y_hi:
                    continue
                o = (req["class"], color, s, rng.randint(x_lo, x_hi), rng.randint(y_lo, y_hi), vx, vy)
                if all(_clear(o, p, frames) for p in placed):
                    break
            else:
                return None
            placed.append(o)
    return placed


def _plan_relative(meta: dict, rng: random.Random, frames: int, speed: int) -> list[Obj] | None:
    """Two objects moving along one axis (drawn), in opposite directions: away from each other
    (``apart``) or towards each other (``towards``)."""
    from dgpo.toy.video_scorer import MIN_SPEED, relative_checks

    (ra, rb), relation = meta["include"], meta["motion"]
    ca, cb = (r.get("color") or rng.choice(COLORS) for r in (ra, rb))
    axis = rng.randrange(2)
    a_low = rng.random() < 0.5  # a is the object with the lower coordinate on the axis
    v = speed * (-1 if a_low else 1) * (1 if relation == "apart" else -1)  # a's velocity on the axis
    objs = []
    for req, color, vel in ((ra, ca, v), (rb, cb, -v)):
        s = rng.randint(MIN_SIZE, MAX_SIZE)
        vx, vy = (vel, 0) if axis == 0 else (0, vel)
        (x_lo, x_hi), (y_lo, y_hi) = _start_range(vx, s, frames), _start_range(vy, s, frames)
        if x_lo > x_hi or y_lo > y_hi:
            return None
        objs.append((req["class"], color, s, rng.randint(x_lo, x_hi), rng.randint(y_lo, y_hi), vx, vy))
    a, b = objs
    if (_centre(a, 0)[axis] < _centre(b, 0)[axis]) != a_low or not _clear(a, b, frames):
        return None
    dist = np.array([np.hypot(*(_centre(a, f) - _centre(b, f))) for f in range(frames)])
    if not all(x == 1.0 for x in relative_checks(dist, relation, MIN_SPEED * (frames - 1), tol=0.0).values()):
        return None
    return [a, b]


def _centre(o: Obj, f: int) -> np.ndarray:
    return np.array([o[3] + o[5] * f + o[2] / 2, o[4] + o[6] * f + o[2] / 2])


def plan(meta: dict, rng: random.Random, frames: int = FRAMES) -> list[Obj]:
    """The objects of a clip for ``meta``: (shape, colour, size, x, y, vx, vy) each."""
    _check_drawable(meta)
    check_motion(meta)
    if frames < 2:
        raise InputError(f"a toy video clip needs at least 2 frames, got {frames}")
    for _ in range(500):
        speed = rng.choice(SPEEDS)
        planner = _plan_relative if meta["motion"] in RELATIVE else _plan_directions
        objs = planner(meta, rng, frames, speed)
        if objs is not None:
            return objs
    raise InputError(f"the toy video renderer could not place the objects of {short(meta['prompt'])}")


def draw(objs: list[Obj], frames: int = FRAMES) -> np.ndarray:
    """Float32 clip [frames, 3, CANVAS, CANVAS] of planned objects."""
    clip = np.zeros((frames, 3, CANVAS, CANVAS), np.float32)
    for shape, color, s, x, y, vx, vy in objs:
        m = shape_mask(shape, s)
        for f in range(frames):
            xf, yf = x + vx * f, y + vy * f
            for ch, v in enumerate(PALETTE[color]):
                clip[f, ch, yf : yf + s, xf : xf + s][m] = v
    return clip


def render_clip(meta: dict, rng: random.Random, frames: int = FRAMES) -> np.ndarray:
    """Float32 clip [frames, 3, CANVAS, CANVAS] in [0, 1] satisfying ``meta`` (include, exclude by
    construction, and motion)."""
    return draw(plan(meta, rng, frames), frames)
