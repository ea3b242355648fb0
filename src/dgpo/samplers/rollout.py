"""Generation with any :class:`FlowModel`: seeded initial noise, CFG, an ODE sampler."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dgpo.models.base import Cond, FlowModel, cfg_velocity
from dgpo.samplers.ode import sample_ode
from dgpo.schedules import Grid


def initial_noise(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """[B, *shape] standard normal noise, sample b drawn from its own seed (batch-size independent)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def generate(
    model: FlowModel,
    cond: Cond,
    null: Cond,
    seeds: list[int],
    steps: int = 10,
    shift: float = 1.0,
    cfg_scale: float = 4.5,
    method: str = "dpm",
    callback: Callable[[int, torch.Tensor], None] | None = None,
    grid: Grid | None = None,
) -> torch.Tensor:
    """Final latents x0 [B, C, H, W] from the deterministic flow ODE (10-step DPM-Solver++ default) on
    the model family's ``method`` grid (``model.rollout_grid``), or on ``grid``."""
    x = initial_noise(model.latent_shape(), seeds).to(getattr(model, "device", "cpu"))
    grid = grid or model.rollout_grid(method, steps, shift)
    fn = lambda x_t, t: cfg_velocity(model, x_t, t, cond, null, cfg_scale)
    return sample_ode(fn, x, grid, method, callback)
