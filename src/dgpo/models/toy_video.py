"""Adapter of the toy video UNet (:mod:`dgpo.toy.video_model`) to the :class:`FlowModel` interface:
pixels are the latents, [B, 3, F, H, W] in [-1, 1]; ``decode`` gives videos [B, F, 3, H, W] in [0, 1]."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from dgpo.models.base import Cond
from dgpo.schedules import NUM_TRAIN_TIMESTEPS, Grid, rollout_grid
from dgpo.toy.video_model import ToyVideoUNet, load_video_toy, tokenize_video


class ToyVideoFlowModel:
    """The toy video world's model; ``path`` is a toy video checkpoint folder (default: the shipped
    video base)."""

    modality = "video"
    lora_targets: ClassVar[list[str]] = ["to_q", "to_k", "to_v", "to_out"]
    repeated_blocks: ClassVar[list[str]] = []  # train.compile compiles the small network whole
    frozen_prefixes = ("text_encoder.",)

    def __init__(self, net: ToyVideoUNet):
        self.net = net.requires_grad_(False).to(memory_format=torch.channels_last)  # as the image toy's
        self.denoiser: torch.nn.Module = net
        self.device = torch.device("cpu")

    def to(self, device) -> ToyVideoFlowModel:
        self.device = torch.device(device)
        self.net.to(self.device)
        self.denoiser.to(self.device)
        return self

    def default_shift(self) -> float:
        return 1.0

    def rollout_grid(self, method: str, steps: int, shift: float) -> Grid:
        return rollout_grid(method, steps, shift)

    @classmethod
    def load(cls, path: str | Path | None = None) -> ToyVideoFlowModel:
        return cls(load_video_toy(path or None))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        ids = tokenize_video(list(prompts), self.net.cfg.max_tokens).to(self.device)
        return self.net.text_encoder(ids)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x_t [B, 3, F, H, W]; time in [0, 1] = timestep / 1000, as the image toy's."""
        time = t.to(x_t.device, torch.float32) / NUM_TRAIN_TIMESTEPS
        return self.denoiser(x_t, time, cond).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> videos [B, F, 3, H, W] in [0, 1]."""
        return ((latents + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4).contiguous()

    def latent_shape(self) -> tuple[int, int, int, int]:
        cfg = self.net.cfg
        return (3, cfg.frames, cfg.image_size, cfg.image_size)
