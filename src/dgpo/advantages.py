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
