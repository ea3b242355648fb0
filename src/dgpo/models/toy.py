"""Adapter of the built-in toy UNet to the :class:`FlowModel` interface (pixels are the latents), and the
base class every toy world's adapter shares."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from dgpo.models.base import Cond
from dgpo.schedules import NUM_TRAIN_TIMESTEPS, Grid, rollout_grid
from dgpo.toy.model import FlowUNet, ToyUNet, tokenize
from dgpo.toy.weights import BUILTIN_BASE, load_toy


class ToyAdapter:
    """A toy world's network as a :class:`FlowModel`: pixels in [-1, 1] are the latents, the text encoder
    is frozen (prompts are encoded once, as with real models), time is timestep / 1000. A world sets
    :meth:`load_net` and, where its latents are not images, ``modality``, :meth:`decode` and
    :meth:`latent_shape`."""

    lora_targets: ClassVar[list[str]] = ["to_q", "to_k", "to_v", "to_out"]
    repeated_blocks: ClassVar[list[str]] = []  # train.compile compiles the small network whole
    frozen_prefixes = ("text_encoder.",)
    channels_last_input = True  # hand the denoiser channels-last images (faster convolutions on the CPU)

    def __init__(self, net: FlowUNet):
        # channels-last convolutions: faster on the CPU, the same results to float rounding
        # (docs/results/performance.md, benchmarks/perf/toy_memory_format.py)
        self.net = net.requires_grad_(False).to(memory_format=torch.channels_last)
        self.denoiser: torch.nn.Module = net
        self.device = torch.device("cpu")

    @staticmethod
    def load_net(path: str | Path | None) -> FlowUNet:
        """The world's network from a checkpoint folder (None: its shipped base)."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path | None = None):
        return cls(cls.load_net(path or None))

    def to(self, device):
        self.device = torch.device(device)
        self.net.to(self.device)
        self.denoiser.to(self.device)
        return self

    def default_shift(self) -> float:
        return 1.0

    def rollout_grid(self, method: str, steps: int, shift: float) -> Grid:
        """diffusers' schedulers with the toy's shift: Euler with its default config, DPM-Solver with
        the official flow config (the same construction as SD3's, another shift)."""
        return rollout_grid(method, steps, shift)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        ids = tokenize(list(prompts), self.net.cfg.max_tokens, self.net.vocab).to(self.device)
        return self.net.text_encoder(ids)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The network takes time in [0, 1]: it gets timestep / 1000, the official training sigma (on
        the shift-1 DPM grid 0.999, 0.899, ... where the solver's sigmas are 0.999, 0.8991, ...), as
        SD3's transformer gets the integer timestep itself."""
        time = t.to(x_t.device, torch.float32) / NUM_TRAIN_TIMESTEPS
        x = x_t.contiguous(memory_format=torch.channels_last) if self.channels_last_input else x_t
        return self.denoiser(x, time, cond).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents + 1) / 2).clamp(0, 1)

    def latent_shape(self) -> tuple[int, ...]:
        s = self.net.cfg.image_size
        return (3, s, s)


class ToyFlowModel(ToyAdapter):
    """The toy world's model; ``path`` is a toy checkpoint folder (default: the shipped base)."""

    @staticmethod
    def load_net(path: str | Path | None) -> ToyUNet:
        return load_toy(path or BUILTIN_BASE)
