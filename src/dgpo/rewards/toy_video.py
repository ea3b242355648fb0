"""The toy VIDEO world's reward: GenEval's rules on every frame, a tracker and motion checks
(:mod:`dgpo.toy.video_scorer`); partial credit (``toy_video``: the mean of the checks) or strict 0/1
(``toy_video_strict``). Takes videos [B, F, 3, H, W] in [0, 1] (``modality = "video"``) and the
metadata rows of :mod:`dgpo.toy.video_grammar` (``include`` / ``exclude`` plus ``motion``)."""

from __future__ import annotations

from dgpo.rewards.verdict import VerdictReward
from dgpo.toy.video_scorer import VideoVerdict, score_clip


class ToyVideoReward(VerdictReward):
    """Its eval rows flag ``frames_ok``, ``consistent_ok`` and ``motion_ok``: which kind of check failed
    (their means are the held-out accuracies of the scene, of consistency and of motion)."""

    key = "toy_video"
    modality = "video"
    flags = ("frames_ok", "consistent_ok", "motion_ok")

    def judge(self, item, meta: dict) -> VideoVerdict:
        return score_clip(item, meta)
