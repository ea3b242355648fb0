"""DGPO training timesteps (Timestep Clip) and group-shared noise, derived from seeds (no broadcast)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from dgpo.schedules import NUM_TRAIN_TIMESTEPS, Grid
from dgpo.seeds import Stream, derive_seed


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*key))


class TrainTime(NamedTuple):
    """One training time: the sigma x_t is re-noised at and the timestep the model receives; shared by
    every sample, or per group (``logit_normal``: tensors [groups], indexed by the epoch's group id)."""

    sigma: float | torch.Tensor
    timestep: torch.Tensor  # 0-dim (dtype as the rollout grid's: int64 on the DPM grid) or [groups]

    def at(self, group_ids: torch.Tensor) -> tuple[float | torch.Tensor, torch.Tensor]:
        """(sigma, [B] timesteps) for samples of these groups."""
        if self.timestep.dim() == 0:
            return self.sigma, self.timestep.expand(len(group_ids))
        return self.sigma[group_ids], self.timestep[group_ids]


def train_timesteps(
    mode: str,
    grid: Grid,
    k: int,
    trunc_steps: int = 4,
    t_min: float = 0.6,
    seed: int = 0,
    epoch: int = 0,
    groups: int = 1,
    shift: float = 1.0,
) -> list[TrainTime]:
    """k training times for one epoch, the same on every process.

    * ``grid`` (official): k distinct indices from 0..trunc_steps of the rollout grid (high noise);
      the model gets the grid's timestep (999, 963, ...) and x_t is re-noised at sigma = timestep /
      1000 (0.999, 0.963, ...; the solver's sigmas there are 0.99967, 0.96394, ...).
    * ``uniform`` (paper Alg. 1): sigma ~ U[t_min, 1], timestep 1000 sigma.
    * ``logit_normal`` (Flow-GRPO's DPO script, SD3's training density): per group, an index
      floor(1000 sigmoid(n)), n ~ N(0, 1), into the 1000 training timesteps of diffusers'
      ``FlowMatchEulerDiscreteScheduler`` with ``shift``: its sigma and its (float) timestep.
    """
    g = _generator(seed, epoch, Stream.TIMESTEPS)
    if mode == "grid":
        if k > trunc_steps + 1:
            raise ValueError(f"k={k} timesteps from only {trunc_steps + 1} grid candidates")
        idx = torch.randperm(trunc_steps + 1, generator=g)[:k].tolist()
        return [TrainTime(float(grid.train_sigmas[i]), grid.timesteps[i].clone()) for i in idx]
    if mode == "uniform":
        sig = t_min + (1 - t_min) * torch.rand(k, generator=g)
        return [TrainTime(float(s), s * NUM_TRAIN_TIMESTEPS) for s in sig]
    if mode == "logit_normal":
        return _logit_normal(k, groups, shift, seed, epoch)
    raise ValueError(f"unknown timestep mode {mode!r}; allowed: 'grid', 'uniform', 'logit_normal'")


def _logit_normal(k: int, groups: int, shift: float, seed: int, epoch: int) -> list[TrainTime]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    out = []
    for slot in range(k):
        u = torch.sigmoid(torch.randn(groups, generator=_generator(seed, epoch, Stream.TIMESTEPS, slot)))
        idx = (u * NUM_TRAIN_TIMESTEPS).long()  # as diffusers' compute_density_for_timestep_sampling's use
        out.append(TrainTime(sched.sigmas[idx].clone(), sched.timesteps[idx].clone()))
    return out


def shared_noise(shape: tuple[int, ...], group_ids: torch.Tensor, seed: int, epoch: int, slot: int):
    """[N, *shape] noise, identical for members of a group, independent across groups/slots/epochs."""
    cache: dict[int, torch.Tensor] = {}
    for g in group_ids.tolist():
        if g not in cache:
            cache[g] = torch.randn(shape, generator=_generator(seed, epoch, Stream.SHARED_NOISE, slot, g))
    return torch.stack([cache[g] for g in group_ids.tolist()])
