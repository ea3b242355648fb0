"""Flow-GRPO's SDE sampler (arXiv 2505.05470 Eqs. 7-9; official ``sde_step_with_logprob``).

The reverse SDE with the flow ODE's marginals, discretised by Euler-Maruyama (dt < 0):

    x_next = x + [v + s_t^2 / (2 t) (x + (1 - t) v)] dt + s_t sqrt(-dt) eps,   s_t = a sqrt(t / (1 - t))

with t = 1 replaced by the grid's second sigma in the denominator 1 - t (the official code's guard).
Flow-GRPO walks SD3's flow-matching Euler grid (``rollout_grid("euler", ...)``: sigma 1, 0.96013, ...,
0.00893, 0 for 10 steps at shift 3), the model receiving the grid's timesteps (1000 sigma).
Each step is a Gaussian policy with that mean and std s_t sqrt(-dt); its log-prob is averaged over
elements (official), so ratios of two policies sit close to 1. Steps outside an optional SDE window
(Flow-GRPO-Fast) are deterministic Euler steps and are not trained.

``sde_type="cps"`` is Flow-GRPO's later coefficients-preserving step (official ``sde_type='cps'``, used
by its Fast recipes): from x0_hat = x - sigma v and x1_hat = x + (1 - sigma) v,
x_next = x0_hat (1 - sigma') + x1_hat sqrt(sigma'^2 - std^2) + std eps with std = sigma' sin(a pi / 2),
so that x_next keeps the flow's noise coefficient sigma'; its log-prob is -(x_next - mean)^2 averaged
over elements, without the variance or the constants (official).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dgpo.schedules import Grid

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


SDE_TYPES = ("sde", "cps")


@dataclass
class SDEStep:
    mean: torch.Tensor  # [B, ...] mean of x_next
    std: torch.Tensor  # [] scale of the step noise, s_t sqrt(-dt) (cps: sigma' sin(a pi / 2))
    std_t: torch.Tensor  # [] s_t itself (the official KL divides by it; cps: the step std)
    kind: str = "sde"


Sigma = float | torch.Tensor  # one value for the batch, or [B] float64 values (one per sample)


def _col(value: Sigma, x: torch.Tensor) -> Sigma:
    """A per-sample [B] value as a column in x's dtype (rounded once, as a Python float multiplying x
    is), broadcasting over x's other dims; a float as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return value


def _scale(t: torch.Tensor, value: Sigma) -> torch.Tensor:
    """t * value, rounded as a Python float scalar rounds it: computed in fp32 (PyTorch's opmath for
    bf16 / fp16; fp64 in fp64), the result in t's dtype; so that per-sample steps reproduce the
    rollout's numbers."""
    if not isinstance(value, torch.Tensor):
        return t * value
    work = t if t.dtype == torch.float64 else t.float()
    return (work * _col(value, work)).to(t.dtype)



def _sqrt(value: Sigma) -> Sigma:
    return torch.sqrt(value) if isinstance(value, torch.Tensor) else math.sqrt(value)


def sde_std(sigma: Sigma, sigma_guard: float, noise_level: float) -> Sigma:
    """s_t = a sqrt(t / (1 - t)); t = 1 uses ``sigma_guard`` (the grid's sigmas[1]) in the denominator."""
    if isinstance(sigma, torch.Tensor):
        return noise_level * torch.sqrt(sigma / (1 - torch.where(sigma >= 1.0, sigma_guard, sigma)))
    denom = 1 - (sigma_guard if sigma >= 1.0 else sigma)
    return noise_level * math.sqrt(sigma / denom)


def sde_step(x: torch.Tensor, v: torch.Tensor, sigma: Sigma, sigma_next: Sigma, sigma_guard: float,
             noise_level: float) -> SDEStep:
    """Mean and std of p(x_next | x) for velocity v at sigma (differentiable in v). Sigmas are floats, or
    [B] float64 tensors (a step per sample: Flow-GRPO-Fast's windows); the coefficients are computed
    in float64 either way."""
    dt = sigma_next - sigma
    s_t = sde_std(sigma, sigma_guard, noise_level)
    c_x, c_v = 1 + s_t**2 / (2 * sigma) * dt, 1 + s_t**2 * (1 - sigma) / (2 * sigma)
    mean = _scale(x, c_x) + _scale(_scale(v, c_v), dt)
    std, std_t = s_t * _sqrt(-dt), s_t
    return SDEStep(mean, _std_tensor(std, x), _std_tensor(std_t, x))


def _std_tensor(value: Sigma, x: torch.Tensor) -> torch.Tensor:
    """A 0-dim tensor, or a [B, 1, ...] column (per-sample steps)."""
    if isinstance(value, torch.Tensor):
        return value.to(x.device, torch.float32).view(-1, *([1] * (x.dim() - 1)))
    return torch.tensor(value, device=x.device)


def cps_step(x: torch.Tensor, v: torch.Tensor, sigma: Sigma, sigma_next: Sigma, noise_level: float) -> SDEStep:
    """Flow-GRPO's coefficients-preserving step (differentiable in v; sigmas as in :func:`sde_step`)."""
    std = sigma_next * math.sin(noise_level * math.pi / 2)
    keep = sigma_next**2 - std**2
    keep = keep.clamp(min=0.0) if isinstance(keep, torch.Tensor) else max(keep, 0.0)
    x0_hat, x1_hat = x - _scale(v, sigma), x + _scale(v, 1 - sigma)
    mean = _scale(x0_hat, 1 - sigma_next) + _scale(x1_hat, _sqrt(keep))
    s = _std_tensor(std, x)
    return SDEStep(mean, s, s, "cps")


def make_step(kind: str, x: torch.Tensor, v: torch.Tensor, sigma: Sigma, sigma_next: Sigma, sigma_guard: float,
              noise_level: float) -> SDEStep:
    if kind == "cps":
        return cps_step(x, v, sigma, sigma_next, noise_level)
    if kind != "sde":
        raise ValueError(f"unknown sde_type {kind!r}; allowed: {SDE_TYPES}")
    return sde_step(x, v, sigma, sigma_next, sigma_guard, noise_level)


def step_logprob(x_next: torch.Tensor, step: SDEStep) -> torch.Tensor:
    """Per-sample log-prob of a step, averaged over elements -> [B]: Gaussian (sde), or official cps's
    -(x_next - mean)^2 without variance and constants."""
    if step.kind == "cps":
        return -((x_next.detach() - step.mean) ** 2).flatten(1).mean(1)
    return gaussian_logprob(x_next, step)


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
    means: torch.Tensor | None = None  # keep_means: [B, steps, ...] each step's mean (Euler steps: x_next)


@torch.no_grad()
def sample_sde(
    velocity: VelocityFn,
    x: torch.Tensor,
    grid: Grid,
    noise_level: float,
    seeds: list[int],
    sde_steps: list[int] | None = None,
    sde_type: str = "sde",
    keep_means: bool = False,
) -> SDETrajectory:
    """Integrate down ``grid``; steps in ``sde_steps`` (default: all, as official) are stochastic, the
    rest Euler. ``velocity(x, timestep [B])`` gets the grid's timesteps. Step noise of sample b comes
    from its own seed, so a sample does not depend on the batch it sits in."""
    s = grid.sigmas.tolist()
    n = len(s) - 1
    sde_steps = list(range(n)) if sde_steps is None else sorted(sde_steps)
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    latents, log_probs, means = [x], torch.zeros(x.shape[0], n, device=x.device), []
    for i in range(n):
        v = velocity(x, grid.model_time(i, x.shape[0], x.device))
        if i in sde_steps:
            step = make_step(sde_type, x, v, s[i], s[i + 1], s[1], noise_level)
            eps = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x.device, x.dtype)
            x = step.mean + step.std * eps
            log_probs[:, i] = step_logprob(x, step)
        else:
            x = x + (s[i + 1] - s[i]) * v
        latents.append(x)
        if keep_means:  # GRPO-Guard's RatioNorm reads the rollout policy's step means
            means.append(step.mean if i in sde_steps else x)
    kept = torch.stack(means, 1) if keep_means else None
    return SDETrajectory(x, torch.stack(latents, 1), log_probs, sde_steps, kept)
