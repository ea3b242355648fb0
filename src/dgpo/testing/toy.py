"""A tiny toy checkpoint with random weights, for tests that train or load a toy model fast."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_toy_checkpoint(folder: str | Path) -> Path:
    """Write a randomly initialised, small toy checkpoint folder (fast; not the shipped base) to
    ``folder`` and return it. Deterministic: it seeds torch's global generator with 0 (and leaves it
    where the initialisation left it), so the same weights come out every time."""
    from dgpo.toy.model import ToyModelConfig, ToyUNet
    from dgpo.toy.weights import save_toy

    folder = Path(folder)
    torch.manual_seed(0)
    net = ToyUNet(ToyModelConfig(channels=(8, 16, 16), text_dim=16, heads=2))
    for p in net.out.parameters():  # the real init zeroes the output; make velocities non-trivial
        torch.nn.init.normal_(p, std=0.02)
    save_toy(net, folder)
    return folder


def tiny_video_checkpoint(folder: str | Path, frames: int = 5) -> Path:
    """A small randomly initialised toy VIDEO checkpoint (``frames`` frames of 32 x 32), deterministic
    like :func:`tiny_toy_checkpoint`: for tests that train or sample a video model fast."""
    from dgpo.toy.video_model import ToyVideoModelConfig, ToyVideoUNet, save_video_toy

    folder = Path(folder)
    torch.manual_seed(0)
    net = ToyVideoUNet(ToyVideoModelConfig(frames=frames, channels=(8, 16, 16), text_dim=16, heads=2))
    for p in net.out.parameters():  # the real init zeroes the output; make velocities non-trivial
        torch.nn.init.normal_(p, std=0.02)
    save_video_toy(net, folder)
    return folder
