"""Sigma (time) grids for flow-matching samplers. Pure functions of torch only.

Convention: sigma = t in [0, 1], x_t = (1 - t) x0 + t eps, t = 1 is pure noise.
"""

from __future__ import annotations

import torch


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift: shift * t / (1 + (shift - 1) t). shift = 1 is the identity."""
    return shift * t / (1 + (shift - 1) * t)


def sigma_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """[steps + 1] decreasing sigmas from 1 to 0: the shifted uniform grid that SD3's Euler and
    diffusers' flow DPM-Solver use (unshifted 1, 1 - 1/steps, ..., 0)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return time_shift(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps; ``t`` a float or [B] (broadcast over the other dims)."""
    if isinstance(t, torch.Tensor) and t.dim() == 1:
        t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * eps
