"""GenEval on `shapes` images: a programmatic detector feeding GenEval's rule engine.

Detection: colour segmentation (each bright pixel takes its nearest palette colour), connected
components per colour (scipy), components below ``MIN_AREA`` dropped as noise, and shape
classification from the component's row-width profile and fill ratio. Each object is a
:class:`~dgpo.rewards.geneval.rules.Detection` whose colour is known and whose confidence is
``1 - 1 / (1 + area)``: larger objects rank first, as area ranked them before the rule engine, and
every object (at least ``MIN_AREA`` = 12 pixels, so above 0.92) passes GenEval's thresholds, 0.9
for counting included.

Correctness and the partial-credit reward are those of :mod:`dgpo.rewards.geneval.rules`, the code
that also scores real images: strict GenEval rules and its ``"corrected"`` partial credit.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dgpo.rewards.geneval.rules import Detection, relative_position, score_image
from dgpo.toy.render import PALETTE

__all__ = ["detect", "relative_position", "score"]

MIN_AREA = 12
BRIGHT = 0.4
MAX_COLOR_DIST = 0.6
_PAL = np.array(list(PALETTE.values()), np.float32)  # [K, 3]
_NAMES = list(PALETTE)
# Mean width (fraction of the box width) over the top, middle and bottom thirds, and fill ratio.
_TEMPLATES = {
    "square": (1.0, 1.0, 1.0, 1.0),
    "circle": (0.66, 1.0, 0.66, 0.80),
    "triangle": (0.26, 0.61, 0.96, 0.61),
    "cross": (0.34, 0.87, 0.34, 0.56),
}


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
    """Objects in an image [3, H, W] with values in [0, 1], largest (most confident) first; boxes are
    x0, y0, x1, y1 pixel edges."""
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
            box = (xs.start, ys.start, xs.stop, ys.stop)
            out.append(Detection(shape, 1 - 1 / (1 + area), box, mask=None, color=name))
    return sorted(out, key=lambda o: -o.score)


def score(img: np.ndarray, meta: dict, partial: str = "corrected") -> tuple[bool, float]:
    """(GenEval strict correctness, partial-credit reward in [0, 1]) of one image."""
    verdict = score_image(detect(img), meta, partial=partial)
    return verdict.correct, verdict.reward
