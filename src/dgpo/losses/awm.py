"""Advantage Weighted Matching's loss (Xue et al. 2025, arXiv 2509.25050; official
``scripts/train_sd3_awm.py``: ``compute_log_prob_awm`` and the training block). Pure tensors.

At x_t = (1 - t) x0 + t eps the model's "log-likelihood" is the negative flow-matching error
m = mean (v - (eps - x0))^2 over elements (float64), weighted per timestep:

    uniform: -m     t: -t m     t2: -t^2 m     huber: -t (sqrt(m + 1e-10) - 1e-5)
    ghuber:  -t ((m + 1e-10)^p - 1e-10^p) / p        (official default, p = 0.25)

The policy term is PPO's clipped ratio objective on it, with advantages clipped to +-A_clip and
rescaled to +-A_max:

    a = clamp(A, -A_clip, A_clip) / A_clip * A_max,   r = exp(logp - logp_old),
    policy = max(-a r, -a clamp(r, 1 - c, 1 + c)),

and the official loop is on-policy (logp_old = logp detached: r = 1, policy = -a, gradient -a grad
logp: an advantage-weighted flow-matching loss). Two squared velocity distances keep the policy near
the frozen reference (beta) and near its slow "KL-EMA" copy (ema_beta), each the mean over elements,
optionally divided by 2 s_t^2 with s_t = 0.7 sqrt(t / (1 - clamp(t, 0, 0.99))) ("ELBO" weight):

    loss = policy + beta kl(v, v_ref) + ema_beta kl(v, v_ema)    (one value per sample and timestep).

With ghuber the policy gradient is a t (m + 1e-10)^(p - 1) grad m: the error of samples better than
their group is lowered, of worse ones raised, the step scaled down where the error is large.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WEIGHTINGS = ("uniform", "t", "t2", "huber", "ghuber")
KL_WEIGHTS = ("uniform", "elbo")
_TINY = 1e-10  # official: keeps the root's derivative finite at m = 0


@dataclass
class AWMLoss:
    loss: torch.Tensor  # [N] per sample: policy + beta kl + ema_beta ema_kl (float64)
    policy: torch.Tensor  # [N] the clipped ratio objective (-a on-policy)
    kl: torch.Tensor  # [N] distance to the reference (zeros without one)
    ema_kl: torch.Tensor  # [N] distance to the KL-EMA model (zeros without one)
    logp: torch.Tensor  # [N] the weighted log-likelihood, with grad
    ratio: torch.Tensor  # [N] exp(logp - logp_old), detached


def _col(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """[N] (or a float) -> float64 [N]."""
    t = torch.as_tensor(t, dtype=torch.float64, device=like.device)
    return t.expand(like.shape[0]) if t.ndim == 0 else t.reshape(-1).double()


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def log_likelihood(v: torch.Tensor, target: torch.Tensor, t: torch.Tensor | float, weighting: str = "ghuber",
                   power: float = 0.25) -> torch.Tensor:
    """[N] weighted negative flow-matching error (official ``compute_log_prob_awm``) in float64;
    ``target`` = eps - x0, ``t`` the sigma of x_t ([N] or a float)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; allowed: {WEIGHTINGS}")
    m, t = _mean((v.double() - target.double()) ** 2), _col(t, v)
    if weighting == "uniform":
        return -m
    if weighting == "t":
        return -m * t
    if weighting == "t2":
        return -m * t**2
    if weighting == "huber":
        return -(torch.sqrt(m + _TINY) - 1e-5) * t
    return -(torch.pow(m + _TINY, power) - _TINY**power) * t / power


def velocity_distance(v: torch.Tensor, other: torch.Tensor, t: torch.Tensor | float,
                      weight: str = "uniform") -> torch.Tensor:
    """[N] mean (v - other)^2 over elements (float64, ``other`` detached); ``elbo``: divided by 2 s_t^2."""
    if weight not in KL_WEIGHTS:
        raise ValueError(f"unknown KL weight {weight!r}; allowed: {KL_WEIGHTS}")
    d = _mean((v.double() - other.detach().double()) ** 2)
    if weight == "uniform":
        return d
    t = _col(t, v)
    std = torch.sqrt(t / (1 - t.clamp(0, 0.99))) * 0.7
    return d / (2 * std**2)


def awm_loss(
    v: torch.Tensor,
    target: torch.Tensor,
    t: torch.Tensor | float,
    adv: torch.Tensor,
    weighting: str = "ghuber",
    power: float = 0.25,
    clip_range: float = 1.0,
    adv_clip_max: float = 5.0,
    advantage_max: float = 1.0,
    logp_old: torch.Tensor | None = None,
    v_ref: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_weight: str = "uniform",
    v_ema: torch.Tensor | None = None,
    ema_beta: float = 0.0,
    ema_kl_weight: str = "uniform",
) -> AWMLoss:
    """Args: the policy's velocity v [N, ...] (with grad) at x_t, the target eps - x0, the sigma t of
    x_t, advantages [N]; ``logp_old`` [N] (None: on-policy, logp detached, as the official recipes);
    the reference's and the KL-EMA model's velocities (None: no such term)."""
    logp = log_likelihood(v, target, t, weighting, power)
    old = logp.detach() if logp_old is None else logp_old.detach().double()
    a = adv.double().clamp(-adv_clip_max, adv_clip_max) / adv_clip_max * advantage_max
    ratio = torch.exp(logp - old)
    policy = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range))
    zero = torch.zeros_like(policy)
    kl = zero if v_ref is None else velocity_distance(v, v_ref, t, kl_weight)
    ema_kl = zero if v_ema is None else velocity_distance(v, v_ema, t, ema_kl_weight)
    loss = policy + beta * kl + ema_beta * ema_kl
    return AWMLoss(loss, policy, kl, ema_kl, logp, ratio.detach())
