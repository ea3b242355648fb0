"""DGPO training timesteps (Timestep Clip, fixed, annealed or adaptive) and group-shared noise, derived
from seeds (no broadcast)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from dgpo.errors import CheckpointError
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
    * ``uniform`` (paper Alg. 1): sigma ~ U[t_min, 1], timestep 1000 sigma; ``adaptive`` draws the same
      from the t_min that :class:`AdaptiveTMin` holds.
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
    if mode in ("uniform", "adaptive"):
        sig = t_min + (1 - t_min) * torch.rand(k, generator=g)
        return [TrainTime(float(s), s * NUM_TRAIN_TIMESTEPS) for s in sig]
    if mode == "logit_normal":
        return _logit_normal(k, groups, shift, seed, epoch)
    raise ValueError(f"unknown timestep mode {mode!r}; allowed: 'grid', 'uniform', 'adaptive', "
                     "'logit_normal'")


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


class AdaptiveTMin:
    """The online timestep clip of ``timesteps.mode=adaptive`` (rationale and measurements:
    docs/results/adaptive-tmin.md).

    Each optimizer step trains at sigma ~ U[t_min, 1]. At each of its training times the loss already
    holds, per sample, the signed weight A and delta = dsm - dsm_ref on fresh rollouts (centred within
    its group by the caller); their cosine ``sum A (-delta) / sqrt(sum A^2 sum delta^2)`` is how far
    the run's update so far ranks new samples as the reward does at that noise level (to first order,
    the agreement of this batch's gradient there with the sum of all past steps). The sums are pooled,
    decayed by ``decay`` per step, for the low edge of the range (its lowest quarter) and for the range
    above it. Once the agreement over the whole range is significant (over Z / sqrt(samples)), every
    step moves t_min by ``-rate * clip((edge - ratio * above) / whole, -1, 1)`` within [lo, hi]: the
    range widens downward while its edge agrees at least ``ratio`` as much as the range above, and
    narrows otherwise.
    """

    EDGE = 0.25  # the low edge: this share of the range [t_min, 1]
    Z = 2.0  # the whole range's agreement must exceed Z / sqrt(its pooled samples) (about 2 standard errors)

    def __init__(self, t_min: float, lo: float, hi: float, rate: float, ratio: float, decay: float):
        self.t_min, self.lo, self.hi, self.rate, self.ratio, self.decay = t_min, lo, hi, rate, ratio, decay
        # pooled, decayed [sum A(-delta), sum A^2, sum delta^2, samples] at the edge and above it
        self.edge, self.above = [0.0] * 4, [0.0] * 4
        self._step: dict[tuple[int, float], torch.Tensor] = {}  # this step: (slot, sigma) -> sums on the device

    def observe(self, slot: int, sigma: float, adv: torch.Tensor, delta: torch.Tensor) -> None:
        """Add one micro-batch's samples at training time ``slot`` (its sigma; A and delta per sample)."""
        a, d = adv.detach().float(), -delta.detach().float()
        part = torch.stack([(a * d).sum(), a.pow(2).sum(), d.pow(2).sum(), torch.ones_like(a).sum()])
        key = (slot, float(sigma))  # a skipped step's finite sums stay: its weights are the next step's
        self._step[key] = part if key not in self._step else self._step[key] + part

    def update(self, reduce: Callable[[float], float] = lambda x: x) -> float:
        """After an optimizer step: pool its sums (``reduce``: the sum over processes) and move t_min;
        the new t_min."""
        self.edge = [self.decay * x for x in self.edge]
        self.above = [self.decay * x for x in self.above]
        for slot, sigma in sorted(self._step):
            sums = [reduce(x) for x in self._step[slot, sigma].tolist()]
            if not all(math.isfinite(x) for x in sums):  # a non-finite step's leftovers: never pooled
                continue
            pool = self.edge if sigma < self.t_min + self.EDGE * (1 - self.t_min) else self.above
            for i, x in enumerate(sums):
                pool[i] += x
        self._step = {}
        whole = [e + a for e, a in zip(self.edge, self.above)]
        edge, above, agree = self.agreement(self.edge), self.agreement(self.above), self.agreement(whole)
        if edge is not None and above is not None and agree is not None and agree > self.Z / math.sqrt(whole[3]):
            margin = (edge - self.ratio * above) / agree
            self.t_min = min(self.hi, max(self.lo, self.t_min - self.rate * min(1.0, max(-1.0, margin))))
        return self.t_min

    @staticmethod
    def agreement(sums: list[float]) -> float | None:
        """cos(A, -delta) of pooled sums; None where undefined (no samples, no spread, or delta 0)."""
        scale = math.sqrt(sums[1] * sums[2])
        return sums[0] / scale if scale > 0 and math.isfinite(sums[0] / scale) else None

    def state_dict(self) -> dict:
        return {"t_min": self.t_min, "edge": list(self.edge), "above": list(self.above)}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's state (state.json, not trusted): a clear CheckpointError if it is malformed."""
        num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        sums = lambda v: isinstance(v, list) and len(v) == 4 and all(num(x) for x in v)  # noqa: E731
        if not (isinstance(state, dict) and num(state.get("t_min")) and sums(state.get("edge"))
                and sums(state.get("above"))):
            raise CheckpointError(f"state.json: 'algorithm.t_min_rule' must hold a finite 't_min' and 'edge' / "
                                  f"'above' lists of 4 finite numbers, got {str(state)[:80]}; move this checkpoint "
                                  "folder aside to resume from the one before, or train without --resume")
        self.t_min = min(self.hi, max(self.lo, float(state["t_min"])))
        self.edge, self.above = [float(x) for x in state["edge"]], [float(x) for x in state["above"]]
        self._step = {}
