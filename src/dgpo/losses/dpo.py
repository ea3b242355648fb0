"""Diffusion-DPO on denoising losses (Wallace et al. 2023; Flow-GRPO's online Flow-DPO baseline).

    L = -log sigma( -(beta / 2) [ (l_w - lref_w) - (l_l - lref_l) ] ),  mean over pairs

written, as the DGPO loss, as a surrogate with a detached per-sample weight so that the pair sum can
be reduced by an injected ``group_sum`` (a pair split across processes stays whole). Pure tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dgpo.losses.dgpo import GroupSum, local_group_sum


@dataclass
class DPOLoss:
    loss: torch.Tensor  # surrogate: its gradient is the gradient of the mean DPO loss over the pairs
    terms: torch.Tensor  # [N] per-sample surrogate terms (summed over a pair: that pair's gradient)
    dpo: torch.Tensor  # the DPO loss value, mean over the pairs present
    accuracy: torch.Tensor  # share of pairs whose implicit reward already prefers the winner
    weight: torch.Tensor  # [N] 1 - sigma(z) per sample


def diffusion_dpo_loss(
    dsm_theta: torch.Tensor,
    dsm_ref: torch.Tensor,
    label: torch.Tensor,
    pair_ids: torch.Tensor,
    beta: float,
    group_sum: GroupSum = local_group_sum,
) -> DPOLoss:
    """Args: per-sample denoising losses [N] of policy and reference; label [N] +1 winner, -1 loser;
    pair_ids [N] pair of each sample (each pair has one winner and one loser, noise shared)."""
    inside = group_sum(label * (dsm_theta - dsm_ref).detach(), pair_ids)  # (l_w - r_w) - (l_l - r_l)
    z = -0.5 * beta * inside
    weight = 1 - torch.sigmoid(z)
    terms = weight * 0.5 * beta * label * dsm_theta
    pair = label != 0
    n_pairs = pair.sum().clamp(min=1) / 2
    value = -(F.logsigmoid(z) * pair).sum() / (2 * n_pairs)  # each pair counted once per member
    accuracy = ((z > 0) & pair).float().sum() / (2 * n_pairs)
    return DPOLoss(terms.sum() / n_pairs, terms, value.detach(), accuracy, weight)
