"""Flow-GRPO's clipped policy-gradient loss and its closed-form step KL (arXiv 2505.05470 Eq. 5;
official ``train_sd3.py``). Pure tensor functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GRPOLoss:
    loss: torch.Tensor
    policy: torch.Tensor
    kl: torch.Tensor
    ratio: torch.Tensor  # [N]
    clipped: torch.Tensor  # [N] bool: the clipped branch is active (zero gradient)


def step_kl(mean_theta: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_theta, std^2 I) || N(mean_ref, std^2 I)) per element, averaged -> [N]:
    mean ||mean_theta - mean_ref||^2 / (2 std^2). Official: std = s_t (no sqrt(-dt)); paper: the step std."""
    std = std.reshape(-1) if std.dim() else std  # per-sample steps: a [B, 1, ...] column -> [B]
    return (mean_theta - mean_ref).pow(2).flatten(1).mean(1) / (2 * std.to(mean_theta.dtype) ** 2)


def flow_grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    adv: torch.Tensor,
    clip_range: float,
    kl: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> GRPOLoss:
    """mean_i max(-A_i r_i, -A_i clip(r_i, 1-eps, 1+eps)) + kl_beta mean_i kl_i, r_i = exp(lp_i - lp_old_i).

    Args:
        log_prob: [N] log-probs of the rollout's x_next under the current policy (with grad).
        old_log_prob: [N] log-probs recorded at rollout time.
        adv: [N] advantages (already clipped to +-adv_clip_max).
        kl: [N] per-sample KL to the reference, or None.
    """
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_range, 1 + clip_range)
    policy = torch.maximum(unclipped, clipped).mean()
    kl_term = torch.zeros((), dtype=log_prob.dtype)
    if kl is not None and kl_beta > 0:
        kl_term = kl_beta * kl.mean()
    active = (clipped > unclipped).detach()
    return GRPOLoss(policy + kl_term, policy.detach(), kl_term.detach(), ratio.detach(), active)
