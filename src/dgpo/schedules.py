"""Rollout grids, taken from diffusers' own schedulers (never from a formula of ours).

Convention: sigma = t in [0, 1], x_t = (1 - t) x0 + t eps, t = 1 is pure noise.

A :class:`Grid` is what a diffusers scheduler holds after ``set_timesteps``: the solver's sigmas
(ending at 0) and the timestep the model receives at each step, on the scheduler's 1000-step scale.
The two differ on the flow DPM-Solver grid the official DGPO code rolls out with: its sigmas start at
0.99967 and its timesteps are int64 floor(1000 sigma) (999, 963, ...), which the transformer receives
as they are; training re-noises at sigma = timestep / 1000 (``Grid.train_sigmas``). SD3's
flow-matching Euler grid (Flow-GRPO's) starts at exactly 1 and its timesteps are float 1000 sigma.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000

# diffusers' flow DPM-Solver++ (2M, midpoint, first-order final step, final sigma 0): the scheduler
# config the official DGPO code loads (Sana 1600M's ``DPMSolverMultistepScheduler``), whose
# ``flow_shift`` it then sets (3 for SD3.5-M).
FLOW_DPM_CONFIG: dict = {
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS, "prediction_type": "flow_prediction", "use_flow_sigmas": True,
    "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "lower_order_final": True,
    "final_sigmas_type": "zero", "timestep_spacing": "linspace",
}
METHODS = ("euler", "dpm")


@dataclass(frozen=True)
class Grid:
    sigmas: torch.Tensor  # [n + 1] float64, decreasing to 0: the sigmas the solver steps between
    timesteps: torch.Tensor  # [n] the model's time input at each step (int64 on DPM grids, float32 on Euler)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def train_sigmas(self) -> torch.Tensor:
        """[n] float64 sigma at which training re-noises for grid index i: timestep / 1000 (official)."""
        return self.timesteps.double() / NUM_TRAIN_TIMESTEPS

    def model_time(self, i: int, n: int, device=None) -> torch.Tensor:
        """[n] copies of step i's timestep, dtype kept (what the model receives)."""
        t = self.timesteps[i].expand(n)
        return t if device is None else t.to(device)

    @classmethod
    def from_scheduler(cls, scheduler) -> Grid:
        """The grid of a diffusers scheduler on which ``set_timesteps`` has been called."""
        sigmas, timesteps = scheduler.sigmas.detach().cpu(), scheduler.timesteps.detach().cpu()
        if len(sigmas) != len(timesteps) + 1:
            raise ValueError(f"{type(scheduler).__name__}: {len(sigmas)} sigmas for {len(timesteps)} timesteps")
        return cls(sigmas.double(), timesteps.clone())


def _class_of(config: Mapping | None) -> str:
    return str((config or {}).get("_class_name", ""))


def euler_scheduler(shift: float, family: Mapping | None = None):
    """diffusers' ``FlowMatchEulerDiscreteScheduler``: the model family's own config when it is one
    (SD3, Flux), with ``shift`` (static shifting) or left dynamic (Flux: ``mu`` = log shift at
    ``set_timesteps``); otherwise diffusers' defaults with ``shift``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    base = dict(family) if _class_of(family) == "FlowMatchEulerDiscreteScheduler" else {}
    if base.get("use_dynamic_shifting"):
        return FlowMatchEulerDiscreteScheduler.from_config(base)
    return FlowMatchEulerDiscreteScheduler.from_config(base, shift=shift)


def dpm_scheduler(shift: float, family: Mapping | None = None):
    """diffusers' ``DPMSolverMultistepScheduler`` with flow sigmas and ``flow_shift=shift``: the family's
    own config when it is a flow DPM-Solver (Sana), else the official DGPO one (``FLOW_DPM_CONFIG``)."""
    from diffusers import DPMSolverMultistepScheduler

    own = _class_of(family) == "DPMSolverMultistepScheduler" and bool((family or {}).get("use_flow_sigmas"))
    return DPMSolverMultistepScheduler.from_config(dict(family) if own else FLOW_DPM_CONFIG, flow_shift=shift)


def rollout_grid(method: str, steps: int, shift: float, family: Mapping | None = None, **set_kwargs) -> Grid:
    """The ``steps``-step grid of ``method`` ("dpm" or "euler") with time shift ``shift``, from the
    diffusers scheduler's ``set_timesteps(steps, **set_kwargs)``; ``family`` is the model family's own
    scheduler config (None: diffusers' defaults / the official DPM config)."""
    if method not in METHODS:
        raise ValueError(f"unknown sampler method {method!r}; allowed: {METHODS}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"time shift must be > 0, got {shift}")
    sched = euler_scheduler(shift, family) if method == "euler" else dpm_scheduler(shift, family)
    if method == "euler" and sched.config.use_dynamic_shifting:
        set_kwargs.setdefault("mu", math.log(shift))
    sched.set_timesteps(steps, **set_kwargs)
    return Grid.from_scheduler(sched)


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps; ``t`` a float or [B] (broadcast over the other dims)."""
    if isinstance(t, torch.Tensor) and t.dim() == 1:
        t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * eps
