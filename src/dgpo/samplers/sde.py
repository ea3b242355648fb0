"""Flow-GRPO's SDE sampler (arXiv 2505.05470 Eqs. 7-9; official ``sde_step_with_logprob``).

The reverse SDE with the flow ODE's marginals, discretised by Euler-Maruyama (dt < 0):

    x_next = x + [v + s_t^2 / (2 t) (x + (1 - t) v)] dt + s_t sqrt(-dt) eps,   s_t = a sqrt(t / (1 - t))

with t = 1 replaced by the grid's second sigma in the denominator 1 - t (the official code's guard).
Flow-GRPO walks SD3's flow-matching Euler grid (``rollout_grid("euler", ...)``: sigma 1, 0.96013, ...,
0.00893, 0 for 10 steps at shift 3), the model receiving the grid's timesteps (1000 sigma).
Each step is a Gaussian policy with that mean and std s_t sqrt(-dt); its log-prob is averaged over
elements (official), so ratios of two policies sit close to 1. Steps outside an optional SDE window
(Flow-GRPO-Fast) are deterministic Euler steps and are not trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dgpo.schedules import Grid

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SDEStep:
    mean: torch.Tensor  # [B, ...] mean of x_next
    std: torch.Tensor  # [] scale of the step noise, s_t sqrt(-dt)
    std_t: torch.Tensor  # [] s_t itself (the official KL divides by it)


def sde_std(sigma: float, sigma_guard: float, noise_level: float) -> float:
    """s_t = a sqrt(t / (1 - t)); t = 1 uses ``sigma_guard`` (the grid's sigmas[1]) in the denominator."""
    denom = 1 - (sigma_guard if sigma >= 1.0 else sigma)
    return noise_level * math.sqrt(sigma / denom)


def sde_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float, sigma_guard: float,
             noise_level: float) -> SDEStep:
    """Mean and std of p(x_next | x) for velocity v at sigma (differentiable in v)."""
    dt = sigma_next - sigma
    s_t = sde_std(sigma, sigma_guard, noise_level)
    mean = x * (1 + s_t**2 / (2 * sigma) * dt) + v * (1 + s_t**2 * (1 - sigma) / (2 * sigma)) * dt
    return SDEStep(mean, torch.tensor(s_t * math.sqrt(-dt), device=x.device), torch.tensor(s_t, device=x.device))


def gaussian_logprob(x_next: torch.Tensor, step: SDEStep) -> torch.Tensor:
    """Per-sample log N(x_next; mean, std^2 I), averaged over elements (official) -> [B]."""
    std = step.std.to(x_next.dtype)
    lp = -((x_next.detach() - step.mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


@dataclass
class SDETrajectory:
    x0: torch.Tensor  # [B, ...] final sample
    latents: torch.Tensor  # [B, steps + 1, ...] x at each grid point (latents[:, 0] = initial noise)
    log_probs: torch.Tensor  # [B, steps] log-prob of each step (0 for deterministic steps)
    sde_steps: list[int]  # indices of the stochastic (trainable) steps


@torch.no_grad()
def sample_sde(
    velocity: VelocityFn,
    x: torch.Tensor,
    grid: Grid,
    noise_level: float,
    seeds: list[int],
    sde_steps: list[int] | None = None,
) -> SDETrajectory:
    """Integrate down ``grid``; steps in ``sde_steps`` (default: all, as official) are stochastic, the
    rest Euler. ``velocity(x, timestep [B])`` gets the grid's timesteps. Step noise of sample b comes
    from its own seed, so a sample does not depend on the batch it sits in."""
    s = grid.sigmas.tolist()
    n = len(s) - 1
    sde_steps = list(range(n)) if sde_steps is None else sorted(sde_steps)
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    latents, log_probs = [x], torch.zeros(x.shape[0], n, device=x.device)
    for i in range(n):
        v = velocity(x, grid.model_time(i, x.shape[0], x.device))
        if i in sde_steps:
            step = sde_step(x, v, s[i], s[i + 1], s[1], noise_level)
            eps = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x.device, x.dtype)
            x = step.mean + step.std * eps
            log_probs[:, i] = gaussian_logprob(x, step)
        else:
            x = x + (s[i + 1] - s[i]) * v
        latents.append(x)
    return SDETrajectory(x, torch.stack(latents, 1), log_probs, sde_steps)
