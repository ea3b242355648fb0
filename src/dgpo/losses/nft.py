"""DiffusionNFT's negative-aware loss (Zheng et al. 2025, arXiv 2509.16117; official
``scripts/train_nft_sd3.py``). Pure tensors.

With the 'old' model's velocity v_old (no grad) and the policy's v, the implicit positive and negative
policies are

    v+ = beta v + (1 - beta) v_old,        v- = (1 + beta) v_old - beta v,

and each sample's optimality r = clamp(A_clip / (2 A_max) + 1/2, 0, 1) mixes their x0-prediction errors
at x_t (x0_pred = x_t - sigma v), each divided by its own detached mean absolute error (the adaptive
weight, in float64, at least 1e-5):

    loss = A_max / beta * [ r ||x0(v+) - x0||^2 / w+ + (1 - r) ||x0(v-) - x0||^2 / w- ] + kl_beta ||v - v_ref||^2

(means over elements). At v = v_old its gradient is -2 A sigma (x0(v_old) - x0) / (w D) for every
beta: an advantage-weighted, adaptively normalised x0 regression towards x0 (pulled away for A < 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADV_MODES = ("all", "positive_only", "negative_only", "one_only", "binary")


@dataclass
class NFTLoss:
    loss: torch.Tensor  # [N] per-sample loss (policy + kl_beta * kl)
    policy: torch.Tensor  # [N] the negative-aware term, A_max / beta * (...)
    kl: torch.Tensor  # [N] mean (v - v_ref)^2 (zeros without a reference)
    r: torch.Tensor  # [N] optimality probability in [0, 1]


def optimality(adv: torch.Tensor, adv_clip_max: float, mode: str = "all") -> torch.Tensor:
    """r in [0, 1] from advantages: clipped to +-adv_clip_max, shaped by ``mode`` (official adv_mode:
    all, positive_only, negative_only, one_only = 1 for A > 0 else 0, binary = sign), then mapped
    linearly, A = 0 -> 1/2."""
    if mode not in ADV_MODES:
        raise ValueError(f"unknown adv_mode {mode!r}; allowed: {ADV_MODES}")
    a = adv.clamp(-adv_clip_max, adv_clip_max)
    if mode == "positive_only":
        a = a.clamp(0, adv_clip_max)
    elif mode == "negative_only":
        a = a.clamp(-adv_clip_max, 0)
    elif mode == "one_only":
        a = (a > 0).to(a.dtype)
    elif mode == "binary":
        a = torch.sign(a)
    return (a / adv_clip_max / 2.0 + 0.5).clamp(0, 1)


def _adaptive_x0_error(x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """[N] mean (x0_pred - x0)^2 over elements divided by the detached mean |x0_pred - x0| (>= 1e-5)."""
    dims = tuple(range(1, x0.ndim))
    with torch.no_grad():
        w = (x0_pred.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
    return ((x0_pred - x0) ** 2 / w).mean(dim=dims)


def nft_loss(
    v: torch.Tensor,
    v_old: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    adv: torch.Tensor,
    beta: float,
    adv_clip_max: float,
    adv_mode: str = "all",
    v_ref: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> NFTLoss:
    """Args: velocities [N, ...] of the policy (with grad), the 'old' model and the reference; the
    re-noised input x_t = (1 - sigma) x0 + sigma eps; sigma [N] (or a float); advantages [N]."""
    s = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device)
    s = s.reshape(-1, *([1] * (x_t.ndim - 1))) if s.ndim else s
    v_old = v_old.detach()
    r = optimality(adv, adv_clip_max, adv_mode).to(x_t.dtype)
    positive = _adaptive_x0_error(x_t - s * (beta * v + (1 - beta) * v_old), x0)
    negative = _adaptive_x0_error(x_t - s * ((1 + beta) * v_old - beta * v), x0)
    policy = (r * positive + (1 - r) * negative) / beta * adv_clip_max
    if v_ref is None:
        kl = torch.zeros_like(policy)
    else:
        kl = ((v - v_ref.detach()) ** 2).mean(dim=tuple(range(1, v.ndim)))
    return NFTLoss(policy + kl_beta * kl, policy, kl, r)
