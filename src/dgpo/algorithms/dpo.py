"""Diffusion-DPO on groups of rollouts (Flow-GRPO's DPO baseline, ``scripts/train_sd3_dpo.py``): from
each group the best vs the worst image, the Diffusion-DPO loss on denoising-loss differences to the
reference, the same noise for both members. The timesteps are DGPO's options (Flow-GRPO's own:
``timesteps.mode=logit_normal``). The reference is the frozen base; ``dpo.ref_update_every`` makes
it Flow-GRPO's online DPO (a refreshed copy of the policy, which also rolls out); ``train.offline``
rolls out from the base (offline DPO, Flow-GRPO's default)."""

from __future__ import annotations

import torch

from dgpo.algorithms.base import Algorithm, StepLoss
from dgpo.losses.dpo import diffusion_dpo_loss
from dgpo.training.ema import RefSnapshot


def best_worst(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Label per sample: +1 the group's best, -1 its worst (the first of each on ties, as the official
    torch.argmax / argmin), 0 others and every member of a zero-spread group (official: a pair of the
    first two members, trained on no preference)."""
    label = torch.zeros_like(rewards)
    for g in group_ids.unique():
        idx = torch.nonzero(group_ids == g).squeeze(1)
        r = rewards[idx]
        if r.max() == r.min():
            continue
        label[idx[int(torch.argmax(r))]] = 1.0
        label[idx[int(torch.argmin(r))]] = -1.0
    return label


class DPO(Algorithm):
    name = "dpo"

    def select(self, batch, rewards, adv, zero, group_ids):
        """One process trains only the pair members; several keep every sample (label 0 gives no
        gradient) so that every process runs the same micro-batches."""
        label = best_worst(rewards, group_ids)
        keep = torch.ones_like(label, dtype=torch.bool) if self.ctx.layout.distributed else label != 0
        return keep, label

    def make_old_model(self, params):
        """Online DPO's refreshed reference takes the 'old' slot (and its place in checkpoints)."""
        return RefSnapshot(params) if self.online() else super().make_old_model(params)

    def frozen_needs(self) -> tuple[bool, bool]:
        return False, True  # the reference's denoising losses

    def online(self) -> bool:
        return self.cfg.dpo.ref_update_every > 0

    def reference_context(self):
        return self.old_model.applied() if self.online() else super().reference_context()

    def rollout_context(self, step):
        """Online DPO: the reference rolls out, refreshed first once every ref_update_every steps."""
        if not self.online() or self.cfg.train.offline:
            return super().rollout_context(step)
        if step > 0 and step % self.cfg.dpo.ref_update_every == 0:
            self.old_model.refresh()
        return self.old_model.applied()

    def micro_loss(self, batch, signal, mb, unit, slot, epoch) -> StepLoss:
        o = self.denoising_losses(batch, mb, unit, slot, epoch)
        dev = o["dsm"].device
        out = diffusion_dpo_loss(o["dsm"], o["dsm_ref"], signal[mb].to(dev), batch.group_ids[mb].to(dev),
                                 self.cfg.dpo.beta, self.ctx.group_sum)
        return StepLoss(out.terms.sum(), {"dpo": out.dpo, "accuracy": out.accuracy})

    def items(self, signal, idx) -> float:
        return float((signal[idx] > 0).sum())  # pairs: one winner each
