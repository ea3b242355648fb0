"""Tiny toy checkpoints with random weights, for tests that train or load a toy model fast."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def _tiny(folder: str | Path, build: Callable[[], torch.nn.Module], save: Callable) -> Path:
    """Seed torch's global generator with 0 (left where the initialisation leaves it), build, give the
    zero-initialised output layer small random weights (velocities not all zero), save to ``folder``."""
    folder = Path(folder)
    torch.manual_seed(0)
    net = build()
    for p in net.out.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save(net, folder)
    return folder


def tiny_toy_checkpoint(folder: str | Path) -> Path:
    """Write a randomly initialised, small toy checkpoint folder (fast; not the shipped base) to
    ``folder`` and return it. Deterministic: the same weights come out every time."""
    from dgpo.toy.model import ToyModelConfig, ToyUNet
    from dgpo.toy.weights import save_toy

    return _tiny(folder, lambda: ToyUNet(ToyModelConfig(channels=(8, 16, 16), text_dim=16, heads=2)), save_toy)


def tiny_video_checkpoint(folder: str | Path, frames: int = 5) -> Path:
    """A small randomly initialised toy VIDEO checkpoint (``frames`` frames of 32 x 32), deterministic
    like :func:`tiny_toy_checkpoint`: for tests that train or sample a video model fast."""
    from dgpo.toy.video_model import ToyVideoModelConfig, ToyVideoUNet, save_video_toy

    cfg = ToyVideoModelConfig(frames=frames, channels=(8, 16, 16), text_dim=16, heads=2)
    return _tiny(folder, lambda: ToyVideoUNet(cfg), save_video_toy)


def tiny_edit_checkpoint(folder: str | Path) -> Path:
    """A small randomly initialised toy EDITING checkpoint (source image as extra input channels),
    deterministic like :func:`tiny_toy_checkpoint`: for tests that train or sample an editing model fast."""
    from dgpo.toy.edit_model import ToyEditModelConfig, ToyEditUNet, save_edit_toy

    return _tiny(folder, lambda: ToyEditUNet(ToyEditModelConfig(channels=(8, 16, 16), text_dim=16, heads=2)),
                 save_edit_toy)
