"""Online Diffusion-DPO (Flow-GRPO's Flow-DPO baseline): from each group of ODE rollouts, the best
vs the worst image, the Diffusion-DPO loss on denoising-loss differences to the reference, with the
same noise for both members and DGPO's timestep options. ``train.offline`` gives offline DPO."""

from __future__ import annotations

import torch

from dgpo.algorithms.base import Algorithm, StepLoss
from dgpo.losses.dpo import diffusion_dpo_loss


def best_worst(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Label per sample: +1 the group's best (first on ties), -1 its worst (last on ties), 0 others
    and every member of a zero-spread group."""
    label = torch.zeros_like(rewards)
    for g in group_ids.unique():
        idx = torch.nonzero(group_ids == g).squeeze(1)
        r = rewards[idx]
        if r.max() == r.min():
            continue
        label[idx[int(torch.argmax(r))]] = 1.0
        label[idx[len(r) - 1 - int(torch.argmin(r.flip(0)))]] = -1.0
    return label


class DPO(Algorithm):
    name = "dpo"

    def select(self, batch, rewards, adv, zero, group_ids):
        """One process trains only the pair members; several keep every sample (label 0 gives no
        gradient) so that every process runs the same micro-batches."""
        label = best_worst(rewards, group_ids)
        keep = torch.ones_like(label, dtype=torch.bool) if self.tr.layout.distributed else label != 0
        return keep, label

    def frozen_needs(self) -> tuple[bool, bool]:
        return False, True  # the reference's denoising losses

    def micro_loss(self, batch, signal, mb, unit, slot, epoch) -> StepLoss:
        o = self.denoising_losses(batch, mb, unit, slot, epoch)
        dev = o["dsm"].device
        out = diffusion_dpo_loss(o["dsm"], o["dsm_ref"], signal[mb].to(dev), batch["group_ids"][mb].to(dev), self.cfg.dpo.beta,
                                 self.tr.group_sum)
        return StepLoss(out.terms.sum(), {"dpo": out.dpo, "accuracy": out.accuracy})

    def items(self, signal, idx) -> float:
        return float((signal[idx] > 0).sum())  # pairs: one winner each
