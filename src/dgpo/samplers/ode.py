"""Deterministic ODE samplers for the flow ODE dx/dt = v(x, t), integrated from t = 1 to 0.

* ``euler``: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v_i.
* ``dpm``: DPM-Solver++(2M) in data prediction (x0 = x - sigma v), alpha = 1 - sigma, the midpoint
  variant with a first-order final step, as diffusers' ``DPMSolverMultistepScheduler`` with
  ``prediction_type="flow_prediction", use_flow_sigmas=True, algorithm_type="dpmsolver++",
  solver_order=2, lower_order_final=True`` (the official DGPO rollout sampler; a test checks equality).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

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
    sigmas: torch.Tensor,
    method: str = "dpm",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Integrate from sigmas[0] (noise, usually 1) down to sigmas[-1] (usually 0).

    Args:
        velocity: v(x [B, ...], sigma [B]) -> [B, ...].
        x: initial noise [B, ...].
        sigmas: [steps + 1] decreasing grid.
        method: "euler" or "dpm".
    """
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; allowed: {ODE_METHODS}")
    s_list = [float(s) for s in sigmas]
    m_prev, n = None, len(s_list) - 1
    for i in range(n):
        s, s_next = s_list[i], s_list[i + 1]
        v = velocity(x, torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device))
        if method == "euler":
            x = x + (s_next - s) * v
        else:
            m0 = x - s * v
            last = i == n - 1 and n < 15  # lower_order_final, as diffusers
            x = dpm_step(x, m0, m_prev, s_list[i - 1] if i else None, s, s_next, first_order=last)
            m_prev = m0
        if progress is not None:
            progress(i)
    return x
