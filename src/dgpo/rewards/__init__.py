"""Rewards: callables (images [B, 3, H, W] in [0, 1], metadata rows) -> Tensor [B]."""

from __future__ import annotations

from collections.abc import Callable

import torch

RewardFn = Callable[[torch.Tensor, list[dict]], torch.Tensor]


def build_reward(name: str, model_path: str = "", processor_path: str = "", device="cpu", *,
                 clip_path: str = "", partial: str = "corrected") -> RewardFn:
    """The one name -> reward map, at the config boundary."""
    from dgpo.rewards.image import JpegCompressibility, colorfulness
    from dgpo.rewards.toy import ToyGenEvalReward

    table = {
        "toy_geneval": lambda: ToyGenEvalReward(strict=False),
        "toy_geneval_strict": lambda: ToyGenEvalReward(strict=True),
        "jpeg_compressibility": lambda: JpegCompressibility(-1.0),
        "jpeg_incompressibility": lambda: JpegCompressibility(1.0),
        "colorfulness": lambda: colorfulness,
        "ocr": _ocr,
        "pickscore": lambda: _pickscore(model_path, processor_path, device),
        "geneval": lambda: _geneval(model_path, clip_path, partial, device),
    }
    if name not in table:
        raise ValueError(f"unknown reward {name!r}; allowed: {sorted(table)}")
    return table[name]()


def _ocr() -> RewardFn:
    from dgpo.rewards.ocr import OCRReward

    return OCRReward()


def _pickscore(model_path: str, processor_path: str, device) -> RewardFn:
    from dgpo.rewards.pickscore import PickScoreReward

    return PickScoreReward(model_path, processor_path, device)


def _geneval(model_path: str, clip_path: str, partial: str, device) -> RewardFn:
    from dgpo.rewards.geneval.reward import GenEvalReward

    return GenEvalReward(model_path, clip_path, partial, device)
