"""Samplers: deterministic ODE solvers (DGPO rollouts) and Flow-GRPO's SDE step."""

from dgpo.samplers.ode import ODE_METHODS, sample_ode

__all__ = ["ODE_METHODS", "sample_ode"]
