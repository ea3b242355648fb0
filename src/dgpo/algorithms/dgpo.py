"""DGPO (arXiv 2510.08425) as the official code trains it: ODE rollouts, group advantages as
signed preference weights, the group Bradley-Terry surrogate at shared-noise x_t, PPO-style clip
against the EMA 'old' model, explicit KL to the reference."""

from __future__ import annotations

import torch

from dgpo.advantages import group_weights
from dgpo.algorithms.base import Algorithm, StepLoss
from dgpo.losses.dgpo import dgpo_velocity_loss


class DGPO(Algorithm):
    name = "dgpo"
    t_min_now: float | None = None  # the t_min this epoch's training times were drawn from

    def select(self, batch, rewards, adv, zero, group_ids):
        d = self.cfg.dgpo
        weights = group_weights(rewards, adv, group_ids, d.weighting, d.softmax_temperature)
        return torch.ones_like(adv, dtype=torch.bool), weights

    def frozen_needs(self) -> tuple[bool, bool]:
        d = self.cfg.dgpo
        # official: the 'old' forward runs when clip_dsm or clip_kl is set (here only if the clip is
        # on: clip_range 0 means off) and, unlike there, also for use_ema_ref alone
        need_old = d.use_ema_ref or (d.clip_range > 0 and (d.clip_dsm or d.clip_kl))
        need_ref = not d.use_ema_ref or d.kl_beta > 0  # the frozen reference feeds the DGPO term or the KL
        return need_old, need_ref

    def units(self, batch, epoch, step):
        self.t_min_now = self.t_min(step)  # logged by micro_loss as the step's t_min
        return super().units(batch, epoch, step)

    def after_step(self, step: int) -> None:
        super().after_step(step)
        if self.t_min_rule is not None:  # the adaptive t_min moves on the step's agreements
            self.t_min_rule.update(self.ctx.layout.all_sum)

    def micro_loss(self, batch, signal, mb, unit, slot, epoch) -> StepLoss:
        d = self.cfg.dgpo
        need_ref = self.frozen_needs()[1]
        o = self.denoising_losses(batch, mb, unit, slot, epoch)
        a = signal[mb].to(o["dsm"].device)
        out = dgpo_velocity_loss(o["v"], o.get("v_ref"), o["target"], a, batch.group_ids[mb].to(a.device),
                                 d.beta_dpo, self.cfg.train.group_size, self.ctx.group_sum, v_old=o.get("v_old"),
                                 clip_range=d.clip_range, clip_dsm=d.clip_dsm, clip_kl=d.clip_kl,
                                 kl_beta=d.kl_beta, use_ema_ref=d.use_ema_ref)
        stats = {"dgpo": out.dgpo, "kl": out.kl, "clip": out.clipped.float().mean(), "weight": out.weight.mean()}
        if self.t_min_now is not None and self.cfg.timesteps.mode in ("uniform", "adaptive"):
            stats["t_min"] = torch.tensor(self.t_min_now)
        if self.t_min_rule is not None:  # A and delta (against the DGPO term's reference), centred per group
            gids = batch.group_ids[mb].to(a.device)
            delta = o["dsm"].detach() - (o["dsm_old"] if d.use_ema_ref else o["dsm_ref"]).to(a.device)
            delta = delta - self.ctx.group_sum(delta, gids) / self.cfg.train.group_size
            self.t_min_rule.observe(slot, unit.sigma, a, delta)
        if need_ref:
            stats["v_mse_ref"] = (o["v"] - o["v_ref"]).detach().pow(2).mean()
        return StepLoss(out.loss * len(mb), stats)
