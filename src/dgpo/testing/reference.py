"""Reference implementations the tests check dgpo's training code against (not used in training)."""

from __future__ import annotations

import torch


def bradley_terry_objective(
    dsm_theta: torch.Tensor,
    dsm_ref: torch.Tensor,
    adv: torch.Tensor,
    group_ids: torch.Tensor,
    beta_dpo: float,
    group_size: int,
) -> torch.Tensor:
    """sum_g -log sigma( -(beta/G) sum_{i in g} A_i (dsm_i - dsm_ref_i) ): Eq. 17 with w = |A| written as
    one signed sum (positives minus negatives), lambda_t folded into beta. The reference
    :func:`dgpo.losses.dgpo.dgpo_loss`'s gradient is tested against."""
    per = adv * beta_dpo * (dsm_theta - dsm_ref) / group_size
    k = int(group_ids.max()) + 1
    s = torch.zeros(k, dtype=per.dtype).index_add(0, group_ids, per)
    return -torch.nn.functional.logsigmoid(-s).sum()
