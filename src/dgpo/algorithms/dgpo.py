"""DGPO (arXiv 2510.08425) as the official code trains it: ODE rollouts, group advantages as
signed preference weights, the group Bradley-Terry surrogate at shared-noise x_t, PPO-style clip
against the EMA 'old' model, explicit KL to the reference."""

from __future__ import annotations

import torch

from dgpo.advantages import group_weights
from dgpo.algorithms.base import Algorithm, StepLoss
from dgpo.losses.dgpo import dgpo_loss, ppo_clip_mask


class DGPO(Algorithm):
    name = "dgpo"

    def select(self, batch, rewards, adv, zero, group_ids):
        d = self.cfg.dgpo
        weights = group_weights(rewards, adv, group_ids, d.weighting, d.softmax_temperature)
        return torch.ones_like(adv, dtype=torch.bool), weights

    def micro_loss(self, batch, signal, mb, unit, slot, epoch) -> StepLoss:
        d, tr = self.cfg.dgpo, self.tr
        need_old = d.clip_range > 0 or d.use_ema_ref
        o = self.denoising_losses(batch, mb, unit, slot, epoch, need_old)
        a = signal[mb].to(o["dsm"].device)
        mask = ppo_clip_mask(a, o["dsm"], o["dsm_old"], d.clip_range) if need_old else None
        v_mse_ref = (o["v"] - o["v_ref"]).pow(2).flatten(1).mean(1)  # KL / velocity distance to the base
        kl = v_mse_ref if d.kl_beta > 0 else None
        out = dgpo_loss(o["dsm"], o["dsm_old"] if d.use_ema_ref else o["dsm_ref"], a, batch["group_ids"][mb].to(a.device),
                        d.beta_dpo, self.cfg.train.group_size, tr.group_sum,
                        clip_mask=mask if d.clip_dsm else None, kl=kl, kl_beta=d.kl_beta, clip_kl=d.clip_kl)
        return StepLoss(out.loss * len(mb), {"dgpo": out.dgpo, "kl": out.kl, "clip": out.clipped.float().mean(),
                                   "weight": out.weight.mean(), "v_mse_ref": v_mse_ref.detach().mean()})
