"""Deterministic ODE samplers for the flow ODE dx/dt = v(x, t), integrated down a :class:`Grid`.

* ``euler``: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v_i.
* ``dpm``: DPM-Solver++(2M) in data prediction (x0 = x - sigma v), alpha = 1 - sigma, the midpoint
  variant with a first-order final step, as diffusers' ``DPMSolverMultistepScheduler`` with
  ``prediction_type="flow_prediction", use_flow_sigmas=True, algorithm_type="dpmsolver++",
  solver_order=2, lower_order_final=True`` (the official DGPO rollout sampler; a test checks equality).

The solver steps between the grid's sigmas; the velocity function receives the grid's timesteps
(the integers 999, 963, ... on the DPM grid), as diffusers' pipelines feed the transformer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dgpo.schedules import Grid

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ODE_METHODS = ("euler", "dpm")


def _lam(sigma: float) -> float:
    return math.log((1 - sigma) / sigma)


def dpm_step(x, m0, m1, s_prev: float | None, s: float, s_next: float, first_order: bool):
    """One DPM-Solver++ step from sigma s to s_next given x0-predictions m0 (at s), m1 (at s_prev)."""
    a, a_next = 1 - s, 1 - s_next
    x_next = (s_next / s) * x + (a_next - a * s_next / s) * m0
    if first_order or m1 is None or s_prev is None or s_prev >= 1.0 or s_next <= 0.0:
        return x_next
    h = _lam(s_next) - _lam(s)
    r0 = (_lam(s) - _lam(s_prev)) / h
    return x_next + 0.5 * (a_next - a * s_next / s) * (m0 - m1) / r0


@torch.no_grad()
def sample_ode(
    velocity: VelocityFn,
    x: torch.Tensor,
    grid: Grid,
    method: str = "dpm",
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate from grid.sigmas[0] (noise) down to grid.sigmas[-1] (usually 0).

    Args:
        velocity: v(x [B, ...], timestep [B]) -> [B, ...]; timestep as the grid holds it.
        x: initial noise [B, ...].
        grid: the rollout grid (``dgpo.schedules.rollout_grid``).
        method: "euler" or "dpm".
        callback: called as callback(i, x) with x after step i (x at grid.sigmas[i + 1]).
    """
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; allowed: {ODE_METHODS}")
    s_list = grid.sigmas.tolist()
    m_prev, n = None, len(s_list) - 1
    for i in range(n):
        s, s_next = s_list[i], s_list[i + 1]
        v = velocity(x, grid.model_time(i, x.shape[0], x.device))
        if method == "euler":
            x = x + (s_next - s) * v
        else:
            m0 = x - s * v
            last = i == n - 1 and n < 15  # lower_order_final, as diffusers
            x = dpm_step(x, m0, m_prev, s_list[i - 1] if i else None, s, s_next, first_order=last)
            m_prev = m0
        if callback is not None:
            callback(i, x)
    return x
