"""GenEval's rules on any detector's output: strict 0/1 correctness and a partial-credit reward.

One rule engine for every detector: the toy world's programmatic detector and the Mask2Former
detector of real images both hand :func:`score_image` everything they found (class, score, box,
optional mask, optional colour) and the engine does the rest, as GenEval's ``evaluate_images.py``
(djghosh13/geneval @ af4902f) does after ``inference_detector``:

* Filtering: per class, keep detections with score **>** ``threshold`` (0.3), or **>**
  ``counting_threshold`` (0.9) when the prompt's tag is ``counting``; sort by score (stable: ties
  keep the detector's order) and keep at most ``max_objects`` (16). GenEval's ``max_overlap`` is 1.0,
  i.e. no NMS: overlapping duplicates all count.
* ``include`` clauses are AND-ed. A clause takes the top-``count`` detections of its class; fewer
  than ``count`` fails. ``color``: every one of those objects must have the colour. ``position``
  ``[relation, i]`` (checked only if the clause matched so far): every object must stand in that
  relation to every object of clause ``i``'s group, and a failed clause ``i`` fails this one.
* ``exclude`` clauses are OR-ed: one fails the image when the class has at least ``count`` kept
  detections (counting prompts exclude ``count + 1``: "two clocks" wants exactly two). An exclude
  clause with a ``color`` counts only objects of that colour (an extension for the toy world's
  "two red squares"; GenEval's own files never put a colour in an exclude clause).
* :func:`relative_position`: centre offset minus a margin of 0.1 x (dim_a + dim_b) per axis,
  divided by the length of the *original* offset; a component beyond +-0.5 names the relation.
* :func:`summarize`: accuracy per tag and ``overall`` = the mean of the tag accuracies.

Partial credit (``partial``), a mean of terms over the include clauses:

* ``"official"``: the RL reward of Flow-GRPO's reward server (``reward_server/gen_eval.py``,
  ``evaluate_reward``), also used by DGPO and DiffusionNFT, reproduced with its quirks: n counts all
  kept detections of the class; a count term ``1 - |count - n| / count`` (unbounded below: -14 for
  one requested object and 16 found); if ``n != count`` a single 0 stands for the colour/position
  terms; a colour term ``1 - |count - n_colour| / count``; a position term of 0 for a missing
  target and, after a failed pair, a 0 *and then a 1* (so a wrong relation still earns 0.75 on a
  two-object position prompt); no position term after a failed colour; exclude clauses ignored.
* ``"corrected"`` (default): the same terms, bounded to [0, 1], each measured on the objects the
  metric looks at. Count: ``max(0, 1 - (shortfall + excess) / count)``, where the shortfall is how
  many of the ``count`` objects are missing and the excess how many objects an exclude clause on
  the class forbids (extra objects no clause forbids cost nothing, as in the metric). Colour: the
  share of the ``count`` requested objects (the top-``count``) present with the colour. Position:
  1 if all ``count`` objects are present, the target clause matched and every pair stands in the
  relation (the clause's own colour aside), else 0; no extra 1. An exclude clause on a class no
  include clause names adds a 0/1 term. The reward is 1 exactly when the image is correct.
  The ``geneval`` reward and the toy world default to this variant.

Ties in score keep the detector's order here; GenEval's ``np.argsort(...)[::-1]`` leaves their
order to numpy's unstable sort (exact ties are rare with a real detector's scores). Reasons list relations in
the order left, right, above, below (GenEval joins a set, whose order varies between runs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dgpo.errors import InputError, short

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
PARTIAL = ("corrected", "official")


@dataclass
class Detection:
    cls: str  # GenEval class name (e.g. "dog"; toy: "circle")
    score: float  # detector confidence
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels (mmdet convention)
    mask: np.ndarray | None = None  # [H, W] bool, optional
    color: str | None = None  # colour name if already known (toy), else None


# Classifies the colour of these detections; called lazily, only for objects a colour clause needs.
ColorFn = Callable[[list[Detection]], list[str]]


@dataclass
class Verdict:
    correct: bool  # strict GenEval correctness
    reward: float  # partial-credit reward (variant chosen by `partial`)
    reason: str  # human-readable, like GenEval's


def keep_detections(detections: list[Detection], threshold: float,
                    max_objects: int) -> dict[str, list[Detection]]:
    """Per class: score > threshold, highest score first, at most ``max_objects`` (no NMS)."""
    by_cls: dict[str, list[Detection]] = defaultdict(list)
    for d in sorted(detections, key=lambda d: -float(d.score)):
        if float(d.score) > threshold and len(by_cls[d.cls]) < max_objects:
            by_cls[d.cls].append(d)
    return dict(by_cls)


def relative_position(box_a, box_b, margin: float = 0.1) -> set[str]:
    """GenEval's relations of box A to box B (x1, y1, x2, y2; y points down); may be empty or two."""
    a, b = np.asarray(box_a, np.float64)[:4], np.asarray(box_b, np.float64)[:4]
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    dims = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    revised = np.maximum(np.abs(offset) - margin * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    return {rel for rel, hit in zip(RELATIONS, (dx < -0.5, dx > 0.5, dy < -0.5, dy > 0.5)) if hit}


class _Colours:
    """Colours of detections: their own ``color``, else ``color_fn`` (once per detection)."""

    def __init__(self, color_fn: ColorFn | None):
        self.color_fn = color_fn
        self.known: dict[int, str] = {}

    def __call__(self, dets: list[Detection]) -> list[str]:
        todo = [d for d in dets if d.color is None and id(d) not in self.known]
        if todo:
            if self.color_fn is None:
                raise ValueError("a colour clause needs color_fn (or detections with a known .color)")
            names = list(self.color_fn(todo))
            if len(names) != len(todo):
                raise ValueError(f"color_fn returned {len(names)} colours for {len(todo)} detections")
            self.known.update((id(d), c) for d, c in zip(todo, names))
        return [d.color if d.color is not None else self.known[id(d)] for d in dets]


def check_meta(meta: dict) -> None:
    """GenEval metadata as the rules read it; an InputError naming the prompt and the clause."""
    where = f"GenEval metadata {short(meta.get('prompt', meta) if isinstance(meta, dict) else meta)}"
    if not isinstance(meta, dict) or not isinstance(meta.get("include"), list):
        raise InputError(f"{where}: needs an 'include' list of clauses")
    if not isinstance(meta.get("exclude", []), list):
        raise InputError(f"{where}: 'exclude' must be a list of clauses")
    for key in ("include", "exclude"):
        for i, req in enumerate(meta.get(key, [])):
            if not isinstance(req, dict) or not isinstance(req.get("class"), str):
                raise InputError(f"{where}: {key}[{i}] needs a 'class' name")
            if not isinstance(req.get("count"), int) or isinstance(req["count"], bool) or req["count"] < 1:
                raise InputError(f"{where}: {key}[{i}] needs an integer 'count' >= 1")
            if "color" in req and not isinstance(req["color"], str):
                raise InputError(f"{where}: {key}[{i}].color must be a colour name")
            pos = req.get("position")
            if pos is None:
                continue
            if key == "exclude" or not (isinstance(pos, (list, tuple)) and len(pos) == 2):
                raise InputError(f"{where}: {key}[{i}].position must be [relation, clause index] in include")
            if pos[0] not in RELATIONS or not isinstance(pos[1], int) or not 0 <= pos[1] < i:
                raise InputError(f"{where}: include[{i}].position {short(pos)}: relation in {RELATIONS}, "
                                 f"index of an earlier include clause")


def _colour_order(c: str) -> tuple[int, str]:
    return (COLORS.index(c) if c in COLORS else len(COLORS), c)


def _of_colour(objs: list[Detection], color: str | None, colours: _Colours) -> list[Detection]:
    return objs if color is None else [o for o, c in zip(objs, colours(objs)) if c == color]


def _first_bad_pair(found, targets, rel: str, margin: float):
    """The first (object, target) pair that does not stand in ``rel``, as GenEval's loop finds it."""
    for o in found:
        for t in targets:
            rels = relative_position(o.box, t.box, margin)
            if rel not in rels:
                return rels
    return None


def _strict(kept, meta, colours, margin) -> tuple[bool, list[str], list]:
    """GenEval's ``evaluate``: (correct, reasons, matched group per include clause or None)."""
    correct, reasons, groups = True, [], []
    for req in meta["include"]:
        cls, n = req["class"], req["count"]
        found = kept.get(cls, [])[:n]
        matched = len(found) >= n
        if not matched:
            reasons.append(f"expected {cls}>={n}, found {len(found)}")
        if matched and "color" in req:
            got = colours(found)
            if got.count(req["color"]) < n:
                matched = False
                seen = ", ".join(f"{got.count(c)} {c}" for c in sorted(set(got), key=_colour_order))
                reasons.append(f"expected {req['color']} {cls}>={n}, found {got.count(req['color'])} "
                               f"{req['color']}; and {seen}")
        if matched and "position" in req:
            rel, target = req["position"]
            if groups[target] is None:
                matched = False
                reasons.append(f"no target for {cls} to be {rel}")
            else:
                bad = _first_bad_pair(found, groups[target], rel, margin)
                if bad is not None:
                    matched = False
                    found_rels = " and ".join(r for r in RELATIONS if r in bad)
                    reasons.append(f"expected {cls} {rel} target, found {found_rels} target")
        correct = correct and matched
        groups.append(found if matched else None)
    for req in meta.get("exclude", []):
        n_found = len(_of_colour(kept.get(req["class"], []), req.get("color"), colours))
        if n_found >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n_found}")
    return correct, reasons, groups


def _reward_official(kept, meta, colours, margin) -> float:
    """Flow-GRPO's ``evaluate_reward``, quirks included (see the module docstring)."""
    terms: list[float] = []
    groups: list = []
    for req in meta["include"]:
        n = req["count"]
        found = kept.get(req["class"], [])  # all kept detections, not the top-`count`
        terms.append(1 - abs(n - len(found)) / n)
        matched = len(found) == n
        if not matched and ("color" in req or "position" in req):
            terms.append(0.0)
        if matched and "color" in req:
            k = colours(found).count(req["color"])
            terms.append(1 - abs(n - k) / n)
            matched = k == n
        if matched and "position" in req:
            rel, target = req["position"]
            if groups[target] is None:
                terms.append(0.0)
                matched = False
            else:
                if _first_bad_pair(found, groups[target], rel, margin) is not None:
                    terms.append(0.0)
                    matched = False
                terms.append(1.0)  # appended after the pair loop whether or not a pair failed
        groups.append(found if matched else None)
    return sum(terms) / len(terms) if terms else 0.0


def _excess(objs: list[Detection], req: dict, colours: _Colours) -> int:
    """How many objects an exclude clause has too many (0 when it holds)."""
    return max(len(_of_colour(objs, req.get("color"), colours)) - (req["count"] - 1), 0)


def _reward_corrected(kept, meta, colours, margin, groups, correct: bool) -> float:
    terms: list[float] = []
    exclude = meta.get("exclude", [])
    for req in meta["include"]:
        cls, n = req["class"], req["count"]
        objs = kept.get(cls, [])
        top = objs[:n]
        short = n - len(top)
        excess = max((_excess(objs, x, colours) for x in exclude if x["class"] == cls), default=0)
        terms.append(max(0.0, 1 - (short + excess) / n))
        if "color" in req:
            terms.append(colours(top).count(req["color"]) / n)
        if "position" in req:
            rel, target = req["position"]
            tgt = groups[target]
            holds = not short and tgt is not None and _first_bad_pair(top, tgt, rel, margin) is None
            terms.append(float(holds))
    named = {req["class"] for req in meta["include"]}
    terms += [float(not _excess(kept.get(x["class"], []), x, colours))
              for x in exclude if x["class"] not in named]
    return sum(terms) / len(terms) if terms else float(correct)


def score_image(
    detections: list[Detection],
    meta: dict,
    color_fn: ColorFn | None = None,
    partial: str = "corrected",
    *,
    threshold: float = 0.3,
    counting_threshold: float = 0.9,
    max_objects: int = 16,
    position_threshold: float = 0.1,
) -> Verdict:
    """GenEval's verdict on one image from all its detections (any class, any score)."""
    if partial not in PARTIAL:
        raise ValueError(f"unknown partial-credit variant {partial!r}; allowed: {PARTIAL}")
    check_meta(meta)
    thr = counting_threshold if meta.get("tag") == "counting" else threshold
    kept = keep_detections(detections, thr, max_objects)
    colours = _Colours(color_fn)
    correct, reasons, groups = _strict(kept, meta, colours, position_threshold)
    if partial == "official":
        reward = _reward_official(kept, meta, colours, position_threshold)
    else:
        reward = _reward_corrected(kept, meta, colours, position_threshold, groups, correct)
    return Verdict(bool(correct), float(reward), "\n".join(reasons))


def summarize(rows: list[dict]) -> dict:
    """GenEval's ``summary_scores.py`` on result rows (``tag``, ``correct``, optionally ``reward``,
    ``metadata`` or ``prompt``): accuracy per tag (in order of first appearance), ``overall`` = the
    mean of the tag accuracies, the share of correct images and of prompts with a correct image."""
    by_tag: dict[str, list[bool]] = defaultdict(list)
    by_prompt: dict[str, bool] = {}
    for r in rows:
        by_tag[r["tag"]].append(bool(r["correct"]))
        key = str(r.get("metadata", r.get("prompt", len(by_prompt))))
        by_prompt[key] = by_prompt.get(key, False) or bool(r["correct"])
    tags = {t: float(np.mean(v)) for t, v in by_tag.items()}
    out = {
        "overall": float(np.mean(list(tags.values()))) if tags else 0.0,
        **tags,
        "image_accuracy": float(np.mean([r["correct"] for r in rows])) if rows else 0.0,
        "prompt_accuracy": float(np.mean(list(by_prompt.values()))) if by_prompt else 0.0,
        "n_images": len(rows),
        "n_prompts": len(by_prompt),
    }
    if rows and all("reward" in r for r in rows):
        out["reward"] = float(np.mean([r["reward"] for r in rows]))
    return out
