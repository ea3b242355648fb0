"""The toy world's GenEval reward: partial credit (GenEval's rule engine, ``corrected`` variant) or
strict 0/1."""

from __future__ import annotations

import torch

from dgpo.toy.scorer import score


class ToyGenEvalReward:
    def __init__(self, strict: bool = False):
        self.strict = strict

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        out = []
        for img, meta in zip(images.float().cpu().numpy(), metas):
            correct, partial = score(img, meta)
            out.append(float(correct) if self.strict else partial)
        return torch.tensor(out)

    def eval_scores(self, images: torch.Tensor, metas: list[dict]) -> list[tuple[bool, float]]:
        """(strict correctness, partial credit) per image, as ``dgpo.evaluation.evaluate`` scores."""
        return [score(img, meta) for img, meta in zip(images.float().cpu().numpy(), metas)]
