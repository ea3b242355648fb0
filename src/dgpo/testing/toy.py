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
