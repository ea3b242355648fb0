"""The toy world's GenEval reward: partial credit (GenEval's rule engine, ``corrected`` variant) or
strict 0/1."""

from __future__ import annotations

import torch

from dgpo.toy.scorer import score


class ToyGenEvalReward:
    def __init__(self, strict: bool = False):
        self.strict = strict

    def details(self, images: torch.Tensor, metas: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward [B], strict GenEval correctness [B] as 0/1) in one pass of the scorer."""
        scores = [score(img, meta) for img, meta in zip(images.float().cpu().numpy(), metas)]
        correct = torch.tensor([float(ok) for ok, _ in scores])
        return (correct.clone() if self.strict else torch.tensor([p for _, p in scores])), correct

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        return self.details(images, metas)[0]

    def eval_scores(self, images: torch.Tensor, metas: list[dict]) -> list[tuple[bool, float]]:
        """(strict correctness, partial credit) per image, as ``dgpo.evaluation.evaluate`` scores."""
        return [score(img, meta) for img, meta in zip(images.float().cpu().numpy(), metas)]
