"""The toy VIDEO world's reward: GenEval's rules on every frame, a tracker and motion checks
(:mod:`dgpo.toy.video_scorer`); partial credit (``toy_video``: the mean of the checks) or strict 0/1
(``toy_video_strict``). Takes videos [B, F, 3, H, W] in [0, 1] (``modality = "video"``) and the
metadata rows of :mod:`dgpo.toy.video_grammar` (``include`` / ``exclude`` plus ``motion``)."""

from __future__ import annotations

import torch

from dgpo.errors import InputError
from dgpo.toy.video_scorer import VideoVerdict, score_clip


class ToyVideoReward:
    modality = "video"

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.version = "toy_video_strict" if strict else "toy_video"

    def _verdicts(self, videos: torch.Tensor, metas: list[dict]) -> list[VideoVerdict]:
        if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or videos.shape[2] != 3:
            shape = list(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
            raise InputError(f"{self.version} scores videos [B, F, 3, H, W] in [0, 1]; got {shape}")
        if len(videos) != len(metas):
            raise InputError(f"{self.version}: {len(videos)} videos but {len(metas)} metadata rows")
        return [score_clip(clip, meta) for clip, meta in zip(videos.detach().float().cpu().numpy(), metas)]

    def details(self, videos: torch.Tensor, metas: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward [B], strict correctness [B] as 0/1) in one pass of the scorer."""
        verdicts = self._verdicts(videos, metas)
        correct = torch.tensor([float(v.correct) for v in verdicts])
        return (correct.clone() if self.strict else torch.tensor([v.reward for v in verdicts])), correct

    def __call__(self, videos: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        return self.details(videos, metas)[0]

    def eval_scores(self, videos: torch.Tensor, metas: list[dict]) -> list[tuple[bool, float, dict]]:
        """(strict correctness, partial credit, {frames_ok, consistent_ok, motion_ok}) per video, as
        ``dgpo.evaluation.evaluate`` scores: the flags say which kind of check failed (their means are
        the held-out accuracies of the scene, of consistency and of motion)."""
        return [(v.correct, v.reward, {k: v.checks[k] for k in ("frames_ok", "consistent_ok", "motion_ok")})
                for v in self._verdicts(videos, metas)]
