"""GenEval's scoring rules on `shapes` images, with a programmatic detector.

Detection: colour segmentation (each bright pixel takes its nearest palette colour), connected
components per colour (scipy), components below ``MIN_AREA`` dropped as noise, and shape
classification from the component's row-width profile and fill ratio. Components are ranked by
area, which plays the part of GenEval's detector confidence.

Correctness follows GenEval's ``evaluate``: include clauses AND-ed (at least ``count`` objects of the
class; colour checked on the top-``count`` objects; position by bounding-box centres with a margin
of 0.1 x (dim_a + dim_b)), exclude clauses OR-ed. The partial-credit reward follows Flow-GRPO's
GenEval reward: the mean over include clauses of a count part and, when the clause names a colour or
a position, an attribute part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dgpo.toy.render import PALETTE

MIN_AREA = 12
BRIGHT = 0.4
MAX_COLOR_DIST = 0.6
POSITION_THRESHOLD = 0.1
_PAL = np.array(list(PALETTE.values()), np.float32)  # [K, 3]
_NAMES = list(PALETTE)
# Mean width (fraction of the box width) over the top, middle and bottom thirds, and fill ratio.
_TEMPLATES = {
    "square": (1.0, 1.0, 1.0, 1.0),
    "circle": (0.66, 1.0, 0.66, 0.80),
    "triangle": (0.26, 0.61, 0.96, 0.61),
    "cross": (0.34, 0.87, 0.34, 0.56),
}


@dataclass
class Detection:
    shape: str
    color: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (pixel edges)
    area: int


def _classify(mask: np.ndarray) -> str | None:
    h, w = mask.shape
    if max(h, w) > 1.6 * min(h, w):
        return None
    widths = mask.sum(1) / w
    k = max(1, h // 3)
    thirds = (widths[:k], widths[k : h - k] if h > 2 * k else widths, widths[h - k :])
    feat = np.array([t.mean() for t in thirds] + [mask.mean()])
    dist = {k: np.abs(feat - np.array(v)).sum() for k, v in _TEMPLATES.items()}
    best = min(dist, key=dist.get)
    return best if dist[best] < 0.8 else None


def detect(img: np.ndarray) -> list[Detection]:
    """Objects in an image [3, H, W] with values in [0, 1], largest first."""
    pix = np.clip(np.asarray(img, np.float32), 0, 1).transpose(1, 2, 0)  # [H, W, 3]
    d = np.linalg.norm(pix[:, :, None, :] - _PAL[None, None], axis=-1)  # [H, W, K]
    nearest = d.argmin(-1)
    ok = (pix.max(-1) > BRIGHT) & (d.min(-1) < MAX_COLOR_DIST)
    out: list[Detection] = []
    for k, name in enumerate(_NAMES):
        labels, _ = ndimage.label(ok & (nearest == k))
        for i, sl in enumerate(ndimage.find_objects(labels), 1):
            comp = labels[sl] == i
            area = int(comp.sum())
            if area < MIN_AREA:
                continue
            shape = _classify(comp)
            if shape is None:
                continue
            ys, xs = sl
            out.append(Detection(shape, name, (xs.start, ys.start, xs.stop, ys.stop), area))
    return sorted(out, key=lambda o: -o.area)


def relative_position(box_a, box_b) -> set[str]:
    """GenEval's relation of box A to box B (both x0, y0, x1, y1), y pointing down."""
    boxes = np.array([box_a, box_b], np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def _clause(req: dict, objects: list[Detection], groups: list, counting: bool):
    """(strict pass, partial score, matched objects or None) for one include clause."""
    cls_objs = [o for o in objects if o.shape == req["class"]]
    n, want = len(cls_objs), req["count"]
    if counting:  # Flow-GRPO: 1 - |N_gen - N_ref| / N_ref
        count_part = max(0.0, 1 - abs(n - want) / want)
    else:
        count_part = min(n, want) / want
    found = cls_objs[:want]
    ok = n >= want
    attr_parts = []
    if "color" in req:
        good = sum(o.color == req["color"] for o in found)
        attr_parts.append(good / want)
        ok = ok and good >= want
    if "position" in req:
        rel, target = req["position"]
        tgt = groups[target] if target < len(groups) else None
        holds = bool(found) and tgt is not None and all(
            rel in relative_position(o.box, t.box) for o in found for t in tgt
        )
        attr_parts.append(float(holds))
        ok = ok and holds
    score = count_part if not attr_parts else 0.5 * count_part + 0.5 * float(np.mean(attr_parts))
    return ok, score, (found if ok else None)


def score(img: np.ndarray, meta: dict) -> tuple[bool, float]:
    """(GenEval strict correctness, partial-credit reward in [0, 1]) of one image."""
    objects = detect(img)
    counting = meta.get("tag") == "counting" or bool(meta.get("exclude"))
    correct, parts, groups = True, [], []
    for req in meta["include"]:
        ok, part, matched = _clause(req, objects, groups, counting)
        correct &= ok
        parts.append(part)
        groups.append(matched)
    for req in meta.get("exclude", []):
        n = sum(o.shape == req["class"] and o.color == req.get("color", o.color) for o in objects)
        if n >= req["count"]:
            correct = False
    return bool(correct), float(np.mean(parts)) if parts else 0.0
