"""Scorer of the toy VIDEO world: GenEval's rules on every frame, a tracker, and motion checks.

A clip is [F, 3, H, W] in [0, 1]; its metadata is a row of :mod:`dgpo.toy.video_grammar` (GenEval's
``include`` / ``exclude`` plus ``motion``). Three kinds of checks, each a number in [0, 1]:

* **frames**: every frame goes through the image toy's detector (:func:`dgpo.toy.scorer.detect`) and
  GenEval's rule engine (:func:`dgpo.rewards.geneval.rules.score_image`: counts, colours, exact
  counts through ``exclude``). Strict: every frame correct; partial: the mean over frames of the
  engine's ``corrected`` partial credit.
* **consistency**: a tracker links the detections of consecutive frames (Hungarian assignment on
  centre distance; a link only between detections of the same class and colour, at most
  ``max_jump`` pixels apart). A track that does not span every frame is an object that appears,
  disappears or flickers, changes colour or shape (an identity swap: tracks never cross classes or
  colours), or jumps. Strict: every track spans all frames; partial: the share of tracks that do
  (0 with no track at all).
* **motion**, per object the prompt names (a clause of ``count`` N names its top N tracks: longest
  first, then most confident, as GenEval takes the top-``count`` detections), on its centre path
  (box centres; y points down):

  * a direction (``left`` / ``right`` / ``up`` / ``down``): *direction*: the net displacement's
    dominant axis and sign are the prompt's; *monotone*: no step moves against the direction by more
    than ``tol`` pixels; *displacement*: the net displacement along the direction is at least
    ``min_disp`` pixels (default half a pixel per frame, 4 px over 9 frames; the renderer moves
    1-2 px per frame);
  * ``still``: *still*: no frame's centre is more than ``still_max`` pixels (per axis) from the first;
  * ``apart`` / ``towards`` (two objects): the same three checks on the distance between the two
    centres (grows / shrinks, monotone within ``tol``, by at least ``min_disp``).

  An object without a track scores 0 on its checks.

Strict correctness: every check is 1. Partial credit: the mean of all the checks (frames 1 term,
consistency 1 term, then the motion terms), as the image toy's partial credit is the mean of
GenEval's terms: 1 exactly when the clip is correct. A frozen clip (the first frame repeated) passes
``still`` prompts, which is right, and fails every moving prompt strictly (it keeps the direction-free
checks: frames, consistency and monotone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from dgpo.rewards.geneval.rules import Detection, score_image
from dgpo.toy.scorer import detect
from dgpo.toy.video_grammar import RELATIVE, check_motion

MIN_SPEED = 0.5  # px per frame: min_disp = MIN_SPEED * (F - 1)
TOL = 1.0  # px a step may go the wrong way (box edges of a generated shape wobble by a pixel)
STILL_MAX = 2.0  # px a still object's centre may wander from its first position
MAX_JUMP = 6.0  # px between a track's consecutive centres (the renderer moves at most 2)
_AXES = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}


@dataclass
class Track:
    """One object followed through the clip: its class, colour, and per present frame its centre and
    detector confidence."""

    cls: str
    color: str | None
    frames: list[int] = field(default_factory=list)
    centres: list[tuple[float, float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def add(self, f: int, d: Detection) -> None:
        x0, y0, x1, y1 = d.box
        self.frames.append(f)
        self.centres.append(((x0 + x1) / 2, (y0 + y1) / 2))
        self.scores.append(float(d.score))

    @property
    def path(self) -> np.ndarray:
        return np.asarray(self.centres, np.float64).reshape(-1, 2)


@dataclass
class VideoVerdict:
    correct: bool  # strict: every check is 1
    reward: float  # partial credit: the mean of the checks
    checks: dict[str, float]  # frames, consistency, motion (the mean of the motion terms), *_ok flags
    reason: str


def track(frames: list[list[Detection]], max_jump: float = MAX_JUMP) -> list[Track]:
    """Link detections of consecutive frames into tracks: a Hungarian assignment on centre distance
    between the tracks alive at frame f-1 and the detections of frame f, only between the same class
    and colour and within ``max_jump`` px; an unmatched detection starts a new track (no track is
    continued across a missing frame)."""
    tracks: list[Track] = []
    alive: list[Track] = []
    for f, dets in enumerate(frames):
        new_alive: list[Track] = []
        matched: set[int] = set()
        if alive and dets:
            cost = np.full((len(alive), len(dets)), 1e9)
            for i, t in enumerate(alive):
                cx, cy = t.centres[-1]
                for j, d in enumerate(dets):
                    if d.cls == t.cls and d.color == t.color:
                        dist = float(np.hypot((d.box[0] + d.box[2]) / 2 - cx, (d.box[1] + d.box[3]) / 2 - cy))
                        if dist <= max_jump:
                            cost[i, j] = dist
            for i, j in zip(*linear_sum_assignment(cost)):
                if cost[i, j] < 1e9:
                    alive[i].add(f, dets[j])
                    new_alive.append(alive[i])
                    matched.add(int(j))
        for j, d in enumerate(dets):
            if j not in matched:
                t = Track(d.cls, d.color)
                t.add(f, d)
                tracks.append(t)
                new_alive.append(t)
        alive = new_alive
    return tracks


def direction_checks(path: np.ndarray, direction: str, min_disp: float, tol: float = TOL,
                     still_max: float = STILL_MAX) -> dict[str, float]:
    """The checks of one centre path [K, 2] (x, y; y down) against a direction of
    :data:`~dgpo.toy.video_grammar.DIRECTIONS`: {direction, monotone, displacement}, or {still}."""
    if direction == "still":
        ok = len(path) >= 1 and float(np.abs(path - path[:1]).max(initial=0.0)) <= still_max
        return {"still": float(ok)}
    if len(path) < 2:
        return {"direction": 0.0, "monotone": 0.0, "displacement": 0.0}
    axis, sign = _AXES[direction]
    net = path[-1] - path[0]
    along, across = sign * net[axis], abs(net[1 - axis])
    steps = sign * np.diff(path[:, axis])
    return {"direction": float(along > 0 and along > across), "monotone": float(np.all(steps >= -tol)),
            "displacement": float(along >= min_disp)}


def relative_checks(dist: np.ndarray, relation: str, min_disp: float, tol: float = TOL) -> dict[str, float]:
    """The checks of the distance between two objects per frame [K] for ``apart`` (grows) or
    ``towards`` (shrinks): {direction, monotone, displacement}."""
    if len(dist) < 2:
        return {"direction": 0.0, "monotone": 0.0, "displacement": 0.0}
    sign = 1.0 if relation == "apart" else -1.0
    net = sign * (dist[-1] - dist[0])
    return {"direction": float(net > 0), "monotone": float(np.all(sign * np.diff(dist) >= -tol)),
            "displacement": float(net >= min_disp)}


def _pick(tracks: list[Track], used: set[int], req: dict) -> list[Track | None]:
    """The clause's top-``count`` tracks of its class (and colour): longest, then most confident."""
    cands = [i for i, t in enumerate(tracks) if i not in used and t.cls == req["class"]
             and ("color" not in req or t.color == req["color"])]
    cands.sort(key=lambda i: (-len(tracks[i].frames), -float(np.mean(tracks[i].scores)), tracks[i].frames[0]))
    top = cands[: req["count"]]
    used.update(top)
    return [tracks[i] for i in top] + [None] * (req["count"] - len(top))


def _common_distances(a: Track, b: Track) -> np.ndarray:
    pa, pb = dict(zip(a.frames, a.centres)), dict(zip(b.frames, b.centres))
    common = sorted(set(pa) & set(pb))
    return np.array([np.hypot(pa[f][0] - pb[f][0], pa[f][1] - pb[f][1]) for f in common])


def motion_terms(tracks: list[Track], meta: dict, min_disp: float, tol: float = TOL,
                 still_max: float = STILL_MAX) -> list[tuple[str, float]]:
    """(name, value) of every motion check the prompt asks for, over the tracks it names."""
    used: set[int] = set()
    picked = [_pick(tracks, used, req) for req in meta["include"]]
    motion = meta["motion"]
    if motion in RELATIVE:
        a, b = picked[0][0], picked[1][0]
        dist = _common_distances(a, b) if a is not None and b is not None else np.zeros(0)
        return [(f"{motion}.{k}", v) for k, v in relative_checks(dist, motion, min_disp, tol).items()]
    out = []
    for req, direction, objs in zip(meta["include"], motion, picked):
        for t in objs:
            path = t.path if t is not None else np.zeros((0, 2))
            if t is None and direction == "still":
                checks = {"still": 0.0}
            else:
                checks = direction_checks(path, direction, min_disp, tol, still_max)
            out += [(f"{req['class']}.{direction}.{k}", v) for k, v in checks.items()]
    return out


def score_clip(clip: np.ndarray, meta: dict, *, min_disp: float | None = None, tol: float = TOL,
               still_max: float = STILL_MAX, max_jump: float = MAX_JUMP) -> VideoVerdict:
    """The verdict on one clip [F, 3, H, W] in [0, 1] (see the module docstring)."""
    check_motion(meta)
    clip = np.asarray(clip, np.float32)
    if clip.ndim != 4 or clip.shape[1] != 3:
        raise ValueError(f"a clip is [F, 3, H, W]; got shape {list(clip.shape)}")
    n_frames = clip.shape[0]
    min_disp = MIN_SPEED * max(n_frames - 1, 1) if min_disp is None else min_disp
    dets = [detect(frame) for frame in clip]
    verdicts = [score_image(d, meta) for d in dets]
    frames_ok = all(v.correct for v in verdicts)
    frames = float(np.mean([v.reward for v in verdicts]))
    tracks = track(dets, max_jump)
    complete = [len(t.frames) == n_frames for t in tracks]
    consistency = float(np.mean(complete)) if tracks else 0.0
    terms = motion_terms(tracks, meta, min_disp, tol, still_max)
    motion_ok = all(v == 1.0 for _, v in terms)
    values = [frames, consistency, *(v for _, v in terms)]
    correct = frames_ok and consistency == 1.0 and motion_ok
    reasons = [f"frame {i}: {v.reason}" for i, v in enumerate(verdicts) if not v.correct]
    if consistency < 1.0:
        reasons.append(f"{sum(complete)} of {len(tracks)} tracks span all {n_frames} frames")
    reasons += [f"failed {name}" for name, v in terms if v < 1.0]
    checks = {"frames": frames, "consistency": consistency,
              "motion": float(np.mean([v for _, v in terms])) if terms else 1.0,
              "frames_ok": float(frames_ok), "consistent_ok": float(consistency == 1.0),
              "motion_ok": float(motion_ok)}
    return VideoVerdict(bool(correct), float(np.mean(values)), checks, "\n".join(reasons))


def score(clip: np.ndarray, meta: dict) -> tuple[bool, float]:
    """(strict correctness, partial-credit reward in [0, 1]) of one clip."""
    v = score_clip(clip, meta)
    return v.correct, v.reward
