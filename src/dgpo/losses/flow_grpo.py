"""Flow-GRPO's clipped policy-gradient loss and its closed-form step KL (arXiv 2505.05470 Eq. 5;
official ``train_sd3.py``), and GRPO-Guard's regulated version of it (arXiv 2510.22319: RatioNorm and
the per-step gradient reweight; official ``train_sd3_GRPO_Guard.py``). Pure tensor functions."""

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
    log_ratio: torch.Tensor | None = None  # [N] log of ratio, before exp (its fp32 rounding near 1 is coarse)


def step_kl(mean_theta: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_theta, std^2 I) || N(mean_ref, std^2 I)) per element, averaged -> [N]:
    mean ||mean_theta - mean_ref||^2 / (2 std^2). Official: std = s_t (no sqrt(-dt)); paper: the step std."""
    std = std.reshape(-1) if std.dim() else std  # per-sample steps: a [B, 1, ...] column -> [B]
    return (mean_theta - mean_ref).pow(2).flatten(1).mean(1) / (2 * std.to(mean_theta.dtype) ** 2)


def _clipped(ratio: torch.Tensor, adv: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample max(-A r, -A clip(r, 1-eps, 1+eps)) and where the clipped branch is active."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).detach()


def _result(policy: torch.Tensor, log_ratio: torch.Tensor, ratio: torch.Tensor, active: torch.Tensor,
            kl: torch.Tensor | None, kl_beta: float) -> GRPOLoss:
    kl_term = torch.zeros((), dtype=policy.dtype)
    if kl is not None and kl_beta > 0:
        kl_term = kl_beta * kl.mean()
    return GRPOLoss(policy + kl_term, policy.detach(), kl_term.detach(), ratio.detach(), active, log_ratio.detach())


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
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    terms, active = _clipped(ratio, adv, clip_range)
    return _result(terms.mean(), log_ratio, ratio, active, kl, kl_beta)


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A step's scalar (0-dim, float) or per-sample column ([B, 1, ...]) as a 0-dim or [B] tensor."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return value.reshape(-1) if value.dim() else value


def guard_log_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor, mean: torch.Tensor,
                    old_mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """GRPO-Guard's RatioNorm -> [N]: (lp - lp_old + mean_d (mu - mu_old)^2 / (2 std^2)) std.

    With Gaussian steps of std ``std`` (s_t sqrt(-dt)) and log-probs averaged over the D elements, this
    is mean_d (x_next - mu_old)(mu - mu_old) / std, i.e. mean_d eps (mu - mu_old) for the rollout's noise
    eps: the raw log-ratio's mean -mean_d (mu - mu_old)^2 / (2 std^2) is removed and its 1 / std spread
    across steps taken out.

    Args:
        log_prob, old_log_prob: [N] per-sample log-probs averaged over elements (current, rollout).
        mean, old_mean: [N, ...] the step means under the current policy (with grad) and at rollout.
        std: the step std: a 0-dim tensor or float, or a [N, 1, ...] column (per-sample steps).
    """
    std = _per_sample(std, log_prob)
    bias = (mean - old_mean.detach()).pow(2).flatten(1).mean(1) / (2 * std**2)
    return (log_prob - old_log_prob.detach() + bias) * std


def grpo_guard_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    mean: torch.Tensor,
    old_mean: torch.Tensor,
    std: torch.Tensor | float,
    dt: torch.Tensor | float | None,
    adv: torch.Tensor,
    clip_range: float,
    kl: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> GRPOLoss:
    """Flow-GRPO's clipped objective on the RatioNorm ratio exp(:func:`guard_log_ratio`), its policy term
    divided by the step's |dt| (the gradient reweight; ``dt=None``: RatioNorm alone); the KL term is not
    reweighted. ``dt`` is a float or 0-dim tensor (one step for the batch) or [N] / [N, 1, ...] values."""
    log_ratio = guard_log_ratio(log_prob, old_log_prob, mean, old_mean, std)
    ratio = torch.exp(log_ratio)
    terms, active = _clipped(ratio, adv, clip_range)
    if dt is None:
        policy = terms.mean()
    else:
        dt = _per_sample(dt, terms).abs()
        policy = terms.mean() / dt if dt.dim() == 0 else (terms / dt).mean()
    return _result(policy, log_ratio, ratio, active, kl, kl_beta)
