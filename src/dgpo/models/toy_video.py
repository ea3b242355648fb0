"""Adapter of the toy video UNet (:mod:`dgpo.toy.video_model`) to the :class:`FlowModel` interface:
pixels are the latents, [B, 3, F, H, W] in [-1, 1]; ``decode`` gives videos [B, F, 3, H, W] in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import torch

from dgpo.models.toy import ToyAdapter
from dgpo.toy.video_model import ToyVideoUNet, load_video_toy


class ToyVideoFlowModel(ToyAdapter):
    """The toy video world's model; ``path`` is a toy video checkpoint folder (default: the shipped
    video base)."""

    modality = "video"
    channels_last_input = False  # [B, 3, F, H, W]: the network lays its frames out itself

    @staticmethod
    def load_net(path: str | Path | None) -> ToyVideoUNet:
        return load_video_toy(path)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> videos [B, F, 3, H, W] in [0, 1]."""
        return ((latents + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4).contiguous()

    def latent_shape(self) -> tuple[int, int, int, int]:
        cfg = self.net.cfg
        return (3, cfg.frames, cfg.image_size, cfg.image_size)
