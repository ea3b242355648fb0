"""Scorer of the toy EDITING world: was the edit done, and was the rest of the source kept?

A result is an image [3, H, W] in [0, 1]; its row comes from :mod:`dgpo.toy.edit_grammar` (the edit's
GenEval clauses, the source and target scenes). The image toy's detector (:func:`dgpo.toy.scorer.detect`)
finds its objects, then:

* **edit**: GenEval's rule engine (:func:`dgpo.rewards.geneval.rules.score_image`) on the row's
  ``include`` / ``exclude``: the recoloured, moved, added object is there as asked, the removed one is
  gone. Strict: the engine's verdict; partial: its ``corrected`` partial credit, but 0 while the object
  the instruction names is still detected as it was in the source (its class, colour and place): an
  untouched source earns nothing for the parts of the clauses it already met.
* **kept**: every object of the target that stays where it was in the source (all but a moved or an
  added one; a recoloured one in its new colour) is detected with its class and colour, its centre
  within ``keep_tol`` px and its size within ``size_tol`` px of the scene's; a moved or added object is
  matched by its class anywhere (the edit's clauses judge its colour and place); a detection matched to
  nothing is an **extra** object. Strict:
  all kept and no extra; partial: kept / (objects to keep + extras).

Strict correctness: edit and kept both hold. Partial credit: edit x kept, 1 exactly when correct. The
target drawn as it is (the oracle) scores 1; the source returned unchanged scores 0 (the named object is
still there as it was); noise scores near 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dgpo.rewards.geneval.rules import Detection, score_image
from dgpo.toy.edit_grammar import check_edit_row
from dgpo.toy.scorer import detect

KEEP_TOL = 2.0  # px a kept object's centre may wander (a generated shape's edge wobbles by a pixel)
SIZE_TOL = 2  # px a kept object's size may change


@dataclass
class EditVerdict:
    correct: bool  # strict: the edit done and the rest kept
    reward: float  # partial credit: edit x kept
    checks: dict[str, float]  # edit, kept (partial terms), extras (count), edit_ok, kept_ok (0/1)
    reason: str


def _centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float64)


def _xyxy(obj: dict) -> tuple[int, int, int, int]:
    x, y, s = obj["box"]
    return (x, y, x + s, y + s)


def _same(d: Detection, obj: dict, where: bool, keep_tol: float, size_tol: int) -> bool:
    """Whether detection ``d`` is the scene object ``obj``: with ``where``, of its class and colour in its
    place; else of its class (an edited object: the edit's clauses judge its colour and place)."""
    if d.cls != obj["class"]:
        return False
    if not where:
        return True
    if d.color != obj["color"]:
        return False
    size = max(d.box[2] - d.box[0], d.box[3] - d.box[1])
    near = np.hypot(*(_centre(d.box) - _centre(_xyxy(obj)))) <= keep_tol
    return bool(near and abs(size - obj["box"][2]) <= size_tol)


def _match(dets: list[Detection], objs: list[dict], where: bool, keep_tol: float, size_tol: int) -> int:
    """Match each object to one unused detection (removed from ``dets``); returns how many matched."""
    n = 0
    for obj in objs:
        hit = next((d for d in dets if _same(d, obj, where, keep_tol, size_tol)), None)
        if hit is not None:
            dets.remove(hit)
            n += 1
    return n


def score_edit(img: np.ndarray, row: dict, *, keep_tol: float = KEEP_TOL, size_tol: int = SIZE_TOL,
               partial: str = "corrected") -> EditVerdict:
    """The verdict on one edited image [3, H, W] in [0, 1] (see the module docstring)."""
    check_edit_row(row)
    dets = detect(img)
    edit = score_image(dets, row, partial=partial)
    source, target = row["source_scene"], row["target_scene"]
    placed = {(o["class"], tuple(o["box"])) for o in source}
    fixed = [o for o in target if (o["class"], tuple(o["box"])) in placed]  # kept in place (maybe recoloured)
    free = [o for o in target if (o["class"], tuple(o["box"])) not in placed]  # moved or added
    named = source[row["edited"]] if row.get("edited") is not None else None
    as_was = named is not None and any(_same(d, named, True, keep_tol, size_tol) for d in dets)
    left = list(dets)
    kept = _match(left, fixed, True, keep_tol, size_tol)
    _match(left, free, False, keep_tol, size_tol)
    extras = len(left)
    edit_part = 0.0 if as_was else edit.reward
    denom = len(fixed) + extras
    kept_part = kept / denom if denom else 1.0
    kept_ok = kept == len(fixed) and extras == 0
    correct = edit.correct and not as_was and kept_ok
    reasons = [edit.reason] if edit.reason else []
    if as_was:
        reasons.append(f"the {named['color']} {named['class']} is still as it was")
    if kept < len(fixed):
        reasons.append(f"{len(fixed) - kept} of {len(fixed)} objects to keep changed or missing")
    if extras:
        reasons.append(f"{extras} extra object{'s' if extras > 1 else ''}")
    checks = {"edit": edit_part, "kept": kept_part, "extras": float(extras),
              "edit_ok": float(edit.correct and not as_was), "kept_ok": float(kept_ok)}
    return EditVerdict(bool(correct), float(edit_part * kept_part), checks, "\n".join(reasons))


def score(img: np.ndarray, row: dict) -> tuple[bool, float]:
    """(strict correctness, partial-credit reward in [0, 1]) of one edited image."""
    v = score_edit(img, row)
    return v.correct, v.reward
