"""Advantage Weighted Matching (arXiv 2509.25050) as its official code trains it
(scxue/advantage_weighted_matching, ``scripts/train_sd3_awm.py``, ``config/dgx_awm.py``): the current
policy rolls out with SA-Solver (stochastic between t = 0.3 and 0.9 for GenEval/OCR, an ODE for
PickScore) without CFG; group means, global std; every sample trains, re-noised with its own noise at
one grid index drawn from each of ``awm.train_timesteps`` strata of the grid, with the
advantage-weighted, timestep-weighted flow-matching loss (``dgpo.losses.awm``) on-policy, plus
squared velocity distances to the frozen reference and to a "KL-EMA" copy of the policy that is
blended towards it after each epoch's training (decay min(0.3, 0.001 step))."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from dgpo.algorithms.base import Algorithm, StepLoss
from dgpo.losses.awm import awm_loss
from dgpo.models.base import cfg_velocity
from dgpo.samplers.rollout import generate, initial_noise
from dgpo.samplers.sa_solver import sa_times, sample_sa, stochasticity
from dgpo.schedules import interpolate
from dgpo.seeds import Stream, derive_seed
from dgpo.training.ema import LaggedOldModel

KL_EMA_RATE = 1e-3  # official: decay = min(kl_ema_decay, 0.001 * global_step)


class _ConstantLag(LaggedOldModel):
    """The KL-EMA model with ``kl_ema_decay_type = 'constant'``: the same decay after every epoch."""

    def decay(self, step: int) -> float:
        return self.cap


def strata(time_type: str, steps: int, count: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """([count] first, [count] end) grid indices of each stratum (official ``time_type``): float32
    linspace boundaries truncated to integers below int(steps x fraction)."""
    if time_type == "discrete_with_init":  # index 0 always, then count - 1 strata of 1..top
        lo, hi = strata("discrete_wo_init", steps, count - 1, fraction) if count > 1 else (torch.zeros(0).long(),) * 2
        return torch.cat([torch.zeros(1).long(), lo]), torch.cat([torch.ones(1).long(), hi])
    if time_type not in ("discrete", "discrete_wo_init"):
        raise ValueError(f"unknown time_type {time_type!r}; allowed: discrete, discrete_wo_init, discrete_with_init")
    bounds = torch.linspace(0 if time_type == "discrete" else 1, int(steps * fraction), count + 1).long()
    return bounds[:-1], bounds[1:]


class AWM(Algorithm):
    name = "awm"

    def make_old_model(self, params):
        a = self.cfg.awm  # the KL-EMA model, moved once per epoch (end_epoch)
        kind = _ConstantLag if a.ema_decay_type == "constant" else LaggedOldModel
        return kind(params, 0, KL_EMA_RATE, a.ema_decay)

    def rollout_method(self) -> str:
        return "euler"  # official: SD3's FlowMatchEulerDiscreteScheduler grid (rollouts and training times)

    def rollout_context(self, step):
        return self.ctx.reference() if self.cfg.train.offline else nullcontext()  # official: the policy

    def generate(self, cond, null, seeds):
        """SA-Solver on the Euler grid's sigmas (official ``use_sa_solver``), step noise from each sample's
        own seed; or the ODE of ``sampler.method`` on the grid."""
        s, model = self.cfg.sampler, self.ctx.model
        if not self.cfg.awm.sa_solver:
            return generate(model, cond, null, seeds, cfg_scale=s.cfg_scale, method=s.method, grid=self.grid)
        x = initial_noise(model.latent_shape(), seeds).to(model.device)
        gens = [torch.Generator().manual_seed(derive_seed(sd, Stream.SDE_STEP)) for sd in seeds]
        noise = lambda: torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x.device, x.dtype)
        fn = lambda x_t, t: cfg_velocity(model, x_t, t, cond, null, s.cfg_scale)
        return sample_sa(fn, x, sa_times(self.grid), stochasticity(self.cfg.awm.noise_level), noise)

    def select(self, batch, rewards, adv, zero, group_ids):
        return torch.ones_like(adv, dtype=torch.bool), adv  # official: no sample is filtered out

    def frozen_needs(self) -> tuple[bool, bool]:
        return self.cfg.awm.ema_beta > 0, self.cfg.awm.beta > 0  # (the KL-EMA model, the reference)

    def optimizer_chunks(self, group_ids, pos, epoch):
        return self.shuffled_chunks(pos, epoch)  # official: a shuffle of the samples across groups

    def micro_batches(self, group_ids, idx):
        return list(idx.split(self.cfg.train.batch_size))  # per-sample loss: no group sums

    def units(self, batch, epoch, step) -> list[torch.Tensor]:
        """Slot j: [samples of the epoch] the grid index each one trains at, uniform in stratum j (official
        one draw per micro-batch of train.batch_size samples; here one per sample)."""
        a = self.cfg.awm
        lo, hi = strata(a.time_type, self.grid.steps, a.train_timesteps, a.timestep_fraction)
        g = torch.Generator().manual_seed(derive_seed(self.cfg.run.seed, epoch, Stream.AWM_TIMESTEPS))
        u = torch.rand(batch.n_total, len(lo), generator=g)
        return list((lo + (u * (hi - lo)).long()).T)

    def end_epoch(self, step: int) -> None:
        self.old_model.end_epoch(step)  # official: after the epoch's training, with its step count

    def noised(self, batch, mb, unit, slot, epoch) -> dict:
        """x_t = (1 - t) x0 + t eps at the sample's grid index, t = timestep / 1000, each sample its own
        noise (official ``randn_tensor`` per timestep), drawn per global sample index."""
        x0, index, grid = batch.x0[mb], batch.index[mb], self.grid
        j, shape, seed = unit[index], tuple(x0.shape[1:]), self.cfg.run.seed
        eps = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
            derive_seed(seed, epoch, Stream.AWM_NOISE, slot, int(i)))) for i in index]).to(x0.device, x0.dtype)
        sigma = grid.train_sigmas[j].to(x0.device, x0.dtype)
        cond, null = self.training_conditions(batch, mb, slot, epoch)  # train.text_dropout (official: none)
        return {"x_t": interpolate(x0, eps, sigma), "t": grid.timesteps[j].to(x0.device), "cond": cond,
                "null": null, "target": eps - x0, "sigma": sigma}

    def micro_loss(self, batch, signal, mb, unit, slot, epoch) -> StepLoss:
        a = self.cfg.awm
        o = self.denoising_losses(batch, mb, unit, slot, epoch)
        out = awm_loss(o["v"], o["target"], o["sigma"], signal[mb].to(o["v"].device), a.weighting,
                       a.ghuber_power, a.clip_range, self.cfg.advantages.clip_max, a.advantage_max,
                       v_ref=o.get("v_ref"), beta=a.beta, kl_weight=a.kl_weight, v_ema=o.get("v_old"),
                       ema_beta=a.ema_beta, ema_kl_weight=a.ema_kl_weight)
        stats = {"policy": out.policy.detach().mean(), "kl": out.kl.detach().mean(),
                 "ema_kl": out.ema_kl.detach().mean(), "dsm": o["dsm"].detach().mean(),
                 "clip": ((out.ratio - 1).abs() > a.clip_range).float().mean()}
        return StepLoss(out.loss.sum().float(), stats)
