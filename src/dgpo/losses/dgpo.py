"""The DGPO loss (arXiv 2510.08425 Eq. 17, as the official ``compute_group_dgpo_loss_allreduce``).

Pure tensor functions: nothing here knows about models, configs or processes. The reduction over a
group is injected (``group_sum``) so that a group split across micro-batches or processes is still
summed whole (pass an all-reduce, or precomputed totals).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

GroupSum = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def local_group_sum(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Each sample's group total [N] from per-sample values [N] (all members present locally)."""
    k = int(group_ids.max()) + 1
    totals = torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(0, group_ids, values)
    return totals[group_ids]


def dsm(v_pred: torch.Tensor, v_target: torch.Tensor) -> torch.Tensor:
    """Per-sample denoising loss: mean over elements of (v* - v)^2 -> [N] (official, lambda_t = 1)."""
    return (v_pred - v_target).pow(2).flatten(1).mean(1)


def ppo_clip_mask(adv: torch.Tensor, dsm_theta: torch.Tensor, dsm_old: torch.Tensor, clip: float):
    """Official PPO-style mask: ratio = exp(dsm_old - dsm); clip if (A > 0 and ratio > 1 + c) or
    (A <= 0 and ratio < 1 - c). ``clip = 0`` disables it (the official code would then clip every
    sample whose ratio moved at all in the direction its advantage asks for)."""
    if clip <= 0:
        return torch.zeros_like(adv, dtype=torch.bool)
    ratio = torch.exp(dsm_old.detach() - dsm_theta.detach())
    return ((adv > 0) & (ratio > 1 + clip)) | ((adv <= 0) & (ratio < 1 - clip))


@dataclass
class DGPOLoss:
    loss: torch.Tensor
    dgpo: torch.Tensor
    kl: torch.Tensor
    weight: torch.Tensor  # [N] sigma(S_g) per sample
    clipped: torch.Tensor  # [N] bool


def dgpo_loss(
    dsm_theta: torch.Tensor,
    dsm_ref: torch.Tensor,
    adv: torch.Tensor,
    group_ids: torch.Tensor,
    beta_dpo: float,
    group_size: int,
    group_sum: GroupSum = local_group_sum,
    clip_mask: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    kl_beta: float = 0.0,
    clip_dsm: bool = True,
    clip_kl: bool = False,
) -> DGPOLoss:
    """Gradient-equivalent surrogate of the group Bradley-Terry objective.

    S_g = sum_{i in g} A_i beta (dsm_i - dsm_ref_i) / G   (detached, whole group via ``group_sum``)
    loss = mean_i [ sigma(S_g(i)) A_i dsm_i ] + kl_beta mean_i kl_i

    Its gradient is (G / (beta N)) times that of sum_g -log sigma(-(beta/G) sum_i A_i (dsm_i - dsm_ref_i)),
    the paper's Eq. 17 with w = |A| (a positive constant absorbed by the learning rate).

    Args:
        dsm_theta: [N] policy denoising losses (with grad).
        dsm_ref: [N] reference denoising losses.
        adv: [N] advantages.
        group_ids: [N] group of each sample.
        clip_mask: [N] bool PPO-style mask; where set, dsm is detached if ``clip_dsm`` and the KL if
            ``clip_kl`` (independently, as official).
        kl: [N] per-sample mean ||v_theta - v_ref||^2, or None.
    """
    delta = (dsm_theta - dsm_ref).detach()
    score = group_sum(adv * beta_dpo * delta / group_size, group_ids)
    weight = torch.sigmoid(score)
    clipped = torch.zeros_like(adv, dtype=torch.bool) if clip_mask is None else clip_mask
    d = torch.where(clipped, dsm_theta.detach(), dsm_theta) if clip_dsm else dsm_theta
    dgpo_term = (weight * adv * d).mean()
    kl_term = torch.zeros((), dtype=dsm_theta.dtype, device=dsm_theta.device)
    if kl is not None and kl_beta > 0:
        k = torch.where(clipped, kl.detach(), kl) if clip_kl else kl
        kl_term = kl_beta * k.mean()
    return DGPOLoss(dgpo_term + kl_term, dgpo_term.detach(), kl_term.detach(), weight, clipped)


def dgpo_velocity_loss(
    v: torch.Tensor,
    v_ref: torch.Tensor | None,
    target: torch.Tensor,
    adv: torch.Tensor,
    group_ids: torch.Tensor,
    beta_dpo: float,
    group_size: int,
    group_sum: GroupSum = local_group_sum,
    v_old: torch.Tensor | None = None,
    clip_range: float = 0.0,
    clip_dsm: bool = True,
    clip_kl: bool = False,
    kl_beta: float = 0.0,
    use_ema_ref: bool = False,
) -> DGPOLoss:
    """The official code's loss block from velocities at one training time.

    dsm = mean (target - v)^2 per sample; the DGPO reference is the frozen model's ``v_ref`` (CFG'd
    when kl_cfg > 1) or, with ``use_ema_ref``, the EMA 'old' model's ``v_old``; the PPO-style mask
    comes from ``v_old`` when given and ``clip_dsm`` or ``clip_kl`` is set; the KL always goes to ``v_ref``.

    Args:
        v: [N, ...] policy velocities (with grad); v_ref, v_old: reference and EMA-old velocities
            (v_ref may be None when use_ema_ref is set and kl_beta is 0: nothing reads it).
        target: [N, ...] eps - x0.
    """
    if use_ema_ref and v_old is None:
        raise ValueError("use_ema_ref needs the EMA 'old' model's velocities (v_old)")
    if v_ref is None and (not use_ema_ref or kl_beta > 0):
        raise ValueError("v_ref is needed unless use_ema_ref is set and kl_beta is 0")
    d = dsm(v, target)
    d_ref = None if v_ref is None else dsm(v_ref, target)
    d_old = None if v_old is None else dsm(v_old, target)
    mask = ppo_clip_mask(adv, d, d_old, clip_range) if d_old is not None and (clip_dsm or clip_kl) else None
    kl = (v - v_ref).pow(2).flatten(1).mean(1) if kl_beta > 0 else None
    return dgpo_loss(d, d_old if use_ema_ref else d_ref, adv, group_ids, beta_dpo, group_size, group_sum,
                     clip_mask=mask, kl=kl, kl_beta=kl_beta, clip_dsm=clip_dsm, clip_kl=clip_kl)
