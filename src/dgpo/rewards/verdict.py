"""A reward from a programmatic scorer's verdicts: the toy video and toy editing worlds' rewards.

A verdict has ``correct`` (strict 0/1), ``reward`` (partial credit) and ``checks`` (named terms); the
reward is the partial credit, or with ``strict`` the 0/1 verdict; ``eval_scores`` adds the world's 0/1
flags (which kind of check failed) to each eval row."""

from __future__ import annotations

from typing import ClassVar

import torch

from dgpo.errors import InputError
from dgpo.rewards.modality import SHAPES


class VerdictReward:
    """Subclasses set ``key``, ``modality``, ``flags`` (names in the verdicts' ``checks``) and ``judge``."""

    key: ClassVar[str]  # the reward's name; "_strict" is appended for the 0/1 variant
    modality: ClassVar[str] = "image"
    flags: ClassVar[tuple[str, ...]] = ()

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.version = f"{self.key}_strict" if strict else self.key

    def judge(self, item, meta: dict):
        """The scorer's verdict on one image [3, H, W] (or video [F, 3, H, W]) as a float32 array."""
        raise NotImplementedError

    def verdicts(self, batch: torch.Tensor, metas: list[dict]) -> list:
        ndim = 5 if self.modality == "video" else 4
        if not isinstance(batch, torch.Tensor) or batch.ndim != ndim or batch.shape[ndim - 3] != 3:
            shape = list(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise InputError(f"{self.version} scores {SHAPES[self.modality]} in [0, 1]; got {shape}")
        if len(batch) != len(metas):
            what = "videos" if self.modality == "video" else "images"
            raise InputError(f"{self.version}: {len(batch)} {what} but {len(metas)} metadata rows")
        return [self.judge(x, meta) for x, meta in zip(batch.detach().float().cpu().numpy(), metas)]

    def details(self, batch: torch.Tensor, metas: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward [B], strict correctness [B] as 0/1) in one pass of the scorer."""
        verdicts = self.verdicts(batch, metas)
        correct = torch.tensor([float(v.correct) for v in verdicts])
        return (correct.clone() if self.strict else torch.tensor([v.reward for v in verdicts])), correct

    def __call__(self, batch: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        return self.details(batch, metas)[0]

    def eval_scores(self, batch: torch.Tensor, metas: list[dict]) -> list[tuple[bool, float, dict]]:
        """(strict correctness, partial credit, {flag: 0/1}) per sample, as ``dgpo.evaluation.evaluate``
        scores: the flags' means are the held-out accuracies of each kind of check."""
        return [(v.correct, v.reward, {k: v.checks[k] for k in self.flags}) for v in self.verdicts(batch, metas)]
