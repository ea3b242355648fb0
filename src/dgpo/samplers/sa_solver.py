"""SA-Solver (Xue et al. 2023, arXiv 2309.05019) as Advantage Weighted Matching's official rollouts run
it (scxue/advantage_weighted_matching, ``flow_grpo/diffusers_patch/sa_solver.py`` called from
``sd3_pipeline_with_logprob.py`` with ``use_sa_solver=True``).

A stochastic Adams predictor-corrector in data prediction D(x, t) = x - t v(x, 1000 t) on the flow
schedule alpha_t = 1 - t, sigma_t = t, lambda_t = log(alpha_t / sigma_t): predictor order 2 (order 1 on
the first step), corrector order 2 with the predictor's noise (none on the first step), one model
evaluation per step ("PEC"), the few-step variants' order-2 correction terms, and a last step that
returns the previous data prediction (no evaluation at t = 0). From t_s to t with h = lambda_t -
lambda_s and stochasticity tau (c = 1 + tau^2):

    x_t = e^{-tau^2 h} (sigma_t / sigma_s) x_s + c sigma_t e^{-tau^2 lambda_t} sum_i b_i D_i
          + sigma_t sqrt(1 - e^{-2 tau^2 h}) xi,

with b_i the integrals of e^{c u} times the Lagrange basis of the D_i over [lambda_s, lambda_t].
tau = 0 is a deterministic multistep ODE solver; the official recipes use tau = noise_level where
0.3 <= t <= 0.9 and 0 elsewhere. The coefficients are computed in float64 (official: float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dgpo.schedules import Grid

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[], torch.Tensor]
WINDOW = (0.3, 0.9)  # official stochasticity_control_function: tau > 0 only for 0.3 <= t <= 0.9


def sa_times(grid: Grid) -> list[float]:
    """The official solver times from a flow-matching Euler grid: its sigmas in float32 with the first
    set to 1 - 1e-3 and the last non-zero one to half the one before (``t[0]``, ``t[-2]``)."""
    t = grid.sigmas.float().clone()
    if len(t) < 3:
        raise ValueError(f"SA-Solver needs at least 2 steps, got {len(t) - 1}")
    t[-2] = t[-3] / 2
    t[0] = 1 - 1e-3
    return t.tolist()


def _lam(t: float) -> float:
    return math.log((1 - t) / t)


def _integrals(a: float, b: float, c: float) -> tuple[float, float]:
    """(int_a^b e^{c u} du, int_a^b e^{c u} u du)."""
    ea, eb = math.exp(c * a), math.exp(c * b)
    return (eb - ea) / c, (eb * (c * b - 1) - ea * (c * a - 1)) / c**2


def _weights(nodes: list[float], lam_s: float, lam_t: float, c: float) -> list[float]:
    """b_i: the integral over [lam_s, lam_t] of e^{c u} times the Lagrange basis polynomial of node i."""
    e0, e1 = _integrals(lam_s, lam_t, c)
    if len(nodes) == 1:
        return [e0]
    n0, n1 = nodes
    return [(e1 - n1 * e0) / (n0 - n1), (e1 - n0 * e0) / (n1 - n0)]


def sa_update(x: torch.Tensor, models: list[torch.Tensor], nodes: list[float], t_s: float, t: float,
              tau: float, noise: torch.Tensor | None, corrector: bool) -> torch.Tensor:
    """One SA predictor (``corrector=False``: models/nodes at t_s and before, newest first) or corrector
    (models/nodes at t and t_s) step from x at t_s to t."""
    lam_s, lam_t = _lam(t_s), _lam(t)
    h, c = lam_t - lam_s, 1 + tau**2
    b = _weights(nodes, lam_s, lam_t, c)
    if len(nodes) == 2:  # the few-step variants' O(h^3) order-2 correction
        core = h * c - 1 + math.exp(-c * h)
        extra = h / 2 - core / (c**2 * h) if corrector else (h**2 / 2 - core / c**2) / (nodes[0] - nodes[1])
        extra *= math.exp(c * lam_t)
        b = [b[0] + extra, b[1] - extra]
    scale = c * t * math.exp(-(tau**2) * lam_t)
    out = math.exp(-(tau**2) * h) * (t / t_s) * x
    for bi, d in zip(b, models):
        out = out + (scale * bi) * d
    if tau > 0 and noise is not None:
        out = out + t * math.sqrt(1 - math.exp(-2 * tau**2 * h)) * noise
    return out


def stochasticity(noise_level: float, window: tuple[float, float] = WINDOW) -> Callable[[float], float]:
    """tau(t): ``noise_level`` inside the window (inclusive), 0 outside (official)."""
    lo, hi = window
    return lambda t: noise_level if lo <= t <= hi else 0.0


@torch.no_grad()
def sample_sa(velocity: VelocityFn, x: torch.Tensor, times: list[float], tau: Callable[[float], float],
              noise: NoiseFn | None = None) -> torch.Tensor:
    """x0 from noise x at ``times[0]`` down ``times`` (``sa_times``), one evaluation per step but the
    last. ``velocity(x, timestep [B])`` gets 1000 t in float32; ``noise()`` gives each stochastic step's
    standard normal draw (drawn only where tau > 0)."""
    if len(times) < 3:
        raise ValueError(f"SA-Solver needs at least 2 steps, got {len(times) - 1}")

    def data(x_t: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((x_t.shape[0],), t, dtype=torch.float32, device=x_t.device) * 1000
        return x_t - t * velocity(x_t, tt).to(x_t.dtype)

    def draw(t: float) -> torch.Tensor | None:
        return noise() if tau(t) > 0 and noise is not None else None

    n = len(times) - 1
    models, past = [data(x, times[0])], [times[0]]
    t = times[1]  # the first step: order-1 predictor, no corrector
    x = sa_update(x, models, [_lam(times[0])], times[0], t, tau(t), draw(t), corrector=False)
    models.append(data(x, t))
    past.append(t)
    for step in range(2, n):
        t, t_s = times[step], past[-1]
        xi = draw(t)
        pred = sa_update(x, models[::-1], [_lam(t_s), _lam(past[-2])], t_s, t, tau(t), xi, corrector=False)
        models = [models[-1], data(pred, t)]
        x = sa_update(x, models[::-1], [_lam(t), _lam(t_s)], t_s, t, tau(t), xi, corrector=True)
        past.append(t)
    return models[-1]  # the last step: the data prediction at times[-2]
