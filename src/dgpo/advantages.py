"""Group-relative advantages (DGPO Eq. 12; official ``PerPromptStatTracker``). Pure torch."""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    std: str = "group",
    eps: float = 1e-4,
    clip_max: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A = (r - mean_group) / (std + eps), clipped to +-clip_max.

    Args:
        rewards: [N] rewards.
        group_ids: [N] int64 group index in 0..K-1 (one group per prompt).
        std: "group" (per-prompt std, official GenEval) or "global" (std of all N, official OCR/PickScore).
        eps: added to the std (official 1e-4).
        clip_max: advantage clip (official 5).

    Returns:
        (advantages [N], zero_spread [K] bool): a group whose rewards are all equal gets A = 0 exactly.
    """
    if std not in ("group", "global"):
        raise ValueError(f"std must be 'group' or 'global', got {std!r}")
    r = rewards.double()
    k = int(group_ids.max()) + 1
    count = torch.zeros(k, dtype=r.dtype).index_add_(0, group_ids, torch.ones_like(r))
    mean = torch.zeros(k, dtype=r.dtype).index_add_(0, group_ids, r) / count
    centred = r - mean[group_ids]
    var = torch.zeros(k, dtype=r.dtype).index_add_(0, group_ids, centred**2) / count
    hi = torch.full((k,), -torch.inf, dtype=r.dtype).scatter_reduce(0, group_ids, r, "amax")
    lo = torch.full((k,), torch.inf, dtype=r.dtype).scatter_reduce(0, group_ids, r, "amin")
    zero = (hi == lo)[group_ids]  # bit-exact: all members equal
    centred = torch.where(zero, torch.zeros_like(centred), centred)
    scale = var.sqrt()[group_ids] if std == "group" else r.std(unbiased=False)
    adv = (centred / (scale + eps)).clamp(-clip_max, clip_max)
    return adv.to(rewards.dtype), hi == lo


def refill_zero_advantage(
    adv: torch.Tensor,
    owner: torch.Tensor,
    world: int,
    batches: int,
    generator: torch.Generator,
    eligible: torch.Tensor | None = None,
    equal: bool = False,
) -> torch.Tensor:
    """Flow-GRPO's zero-advantage filter (official ``train_sd3.py``): [N] bool, which samples train.

    Every sample whose advantage is exactly 0 is dropped (all of a zero-spread group, and a member
    of a live group that sits exactly on its mean); then, per process (``owner`` [N] its rank),
    random dropped samples of that process are re-added until its count divides by ``batches`` (if
    it has enough of them). With several processes, one left with nothing while another trains gets
    ``batches`` of them, so that every process takes part in each optimizer step (the official code
    would stop with an error there). ``eligible`` [N] bool: only these may be re-added (not the
    samples of groups dropped for a failed or non-finite reward). ``equal`` (FSDP, where every forward
    is a collective): then processes with fewer kept samples re-add eligible dropped ones up to the
    largest count, so that all run the same micro-batches.
    """
    keep = adv != 0
    candidates = ~keep if eligible is None else ~keep & eligible
    anyone = bool(keep.any())
    for r in range(world):
        mine = owner == r
        count = int((keep & mine).sum())
        need = batches if (world > 1 and count == 0 and anyone) else (-count) % batches
        dropped = torch.nonzero(mine & candidates).squeeze(1)
        if need and len(dropped) >= need:
            keep[dropped[torch.randperm(len(dropped), generator=generator)[:need]]] = True
    if equal:
        counts = [int((keep & (owner == r)).sum()) for r in range(world)]
        for r in range(world):
            dropped = torch.nonzero((owner == r) & ~keep & candidates).squeeze(1)
            keep[dropped[torch.randperm(len(dropped), generator=generator)[: max(counts) - counts[r]]]] = True
    return keep


WEIGHTINGS = ("adv", "rank", "softmax", "sign")


def _group_standardise(raw: torch.Tensor, group_ids: torch.Tensor, eps: float) -> torch.Tensor:
    k = int(group_ids.max()) + 1
    count = torch.zeros(k, dtype=raw.dtype).index_add_(0, group_ids, torch.ones_like(raw))
    centred = raw - (torch.zeros(k, dtype=raw.dtype).index_add_(0, group_ids, raw) / count)[group_ids]
    var = torch.zeros(k, dtype=raw.dtype).index_add_(0, group_ids, centred**2) / count
    return centred / (var.sqrt()[group_ids] + eps)


def group_weights(
    rewards: torch.Tensor,
    adv: torch.Tensor,
    group_ids: torch.Tensor,
    mode: str = "adv",
    temperature: float = 0.1,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Signed DGPO weights a_i (w_i = |a_i|, positives vs negatives), zero-sum inside every group so
    that the partition function still cancels (paper Eq. 13):

    * ``adv``: the advantage itself (the paper's and the code's choice);
    * ``rank``: the member's rank in its group (ties averaged), standardised;
    * ``softmax``: softmax(r / temperature) over the group, standardised (weight on the best few);
    * ``sign``: +-1 by the sign of A, centred and standardised (every preference counts the same).

    Zero-spread groups get 0. All but ``adv`` are standardised per group like A (unit std).
    """
    if mode not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {mode!r}; allowed: {WEIGHTINGS}")
    if mode == "adv":
        return adv
    r = rewards.double()
    if mode == "rank":
        raw = torch.zeros_like(r)
        for g in group_ids.unique():
            m = group_ids == g
            vals = r[m]
            raw[m] = ((vals[:, None] > vals[None]).double().sum(1)
                      + 0.5 * ((vals[:, None] == vals[None]).double().sum(1) - 1))
    elif mode == "softmax":
        k = int(group_ids.max()) + 1
        z = r / temperature
        zmax = torch.full((k,), -torch.inf, dtype=r.dtype).scatter_reduce(0, group_ids, z, "amax")
        e = torch.exp(z - zmax[group_ids])
        raw = e / torch.zeros(k, dtype=r.dtype).index_add_(0, group_ids, e)[group_ids]
    else:
        raw = torch.sign(adv.double())
    return _group_standardise(raw, group_ids, eps).to(adv.dtype)  # zero-spread groups: raw equal -> 0


def multi_reward_advantages(
    rewards: torch.Tensor,
    parts: dict[str, torch.Tensor],
    weights: dict[str, float],
    group_ids: torch.Tensor,
    mode: str = "weighted_sum",
    std: str = "group",
    eps: float = 1e-4,
    clip_max: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages of a weighted multi-reward ``rewards = sum_k w_k parts[k]``.

    * ``weighted_sum`` (Flow-GRPO's ``multi_score``): :func:`group_advantages` of ``rewards``;
    * ``per_component``: ``sum_k w_k A_k`` with ``A_k`` the (unclipped) group advantage of
      ``parts[k]``, then clipped to +-clip_max: a reward with a large range cannot drown a small one.
      A group has zero spread when every component has.

    Returns (advantages [N], zero_spread [K] bool) like :func:`group_advantages`.
    """
    if mode == "weighted_sum" or not parts:
        return group_advantages(rewards, group_ids, std, eps, clip_max)
    if mode != "per_component":
        raise ValueError(f"mode must be 'weighted_sum' or 'per_component', got {mode!r}")
    adv, zero = torch.zeros_like(rewards, dtype=torch.float64), None
    for name, r in parts.items():
        a, z = group_advantages(r, group_ids, std, eps, clip_max=float("inf"))
        adv += weights[name] * a.double()
        zero = z if zero is None else zero & z
    return adv.clamp(-clip_max, clip_max).to(rewards.dtype), zero
