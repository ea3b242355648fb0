"""What the training loop hands an algorithm (``LoopContext``), the epoch's samples as they travel
between the loop and the algorithm (``Rollouts``) and one micro-batch's loss (``StepLoss``).

The context is all an algorithm sees of the loop: no trainer, no optimizer, no checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from dgpo.config.schema import Config
    from dgpo.models.base import FlowModel
    from dgpo.training.distributed import Layout


@dataclass(frozen=True)
class LoopContext:
    cfg: Config
    model: FlowModel  # its forwards train through the DDP/FSDP wrapper inside ``micro_loss``
    params: list[torch.nn.Parameter]  # the trainable weights (LoRA or all): an algorithm's 'old' model copies them
    shift: float  # the rollout grid's time shift
    layout: Layout  # this process's rank among ``layout.world``, its samples, gathers and sums
    group_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # per-group sums across processes
    lockstep: bool  # every process must run the same forwards (FSDP: each forward is a collective)
    autocast: Callable[[], AbstractContextManager]  # train.mixed_precision for a forward
    reference: Callable[[], AbstractContextManager]  # the frozen base's weights (LoRA off, or the frozen copy)


@dataclass
class Rollouts:
    """The samples this process generated in one epoch, with what training reads of them. Sample ``i``
    here is global sample ``index[i]`` of ``n_total`` (``n_groups`` groups of G, group ``index // G``)."""

    index: torch.Tensor  # [n] global sample indices
    group_ids: torch.Tensor  # [n] global group of each
    cond: Any  # the model's prompt conditions of the n samples
    null: Any  # the empty prompt's
    seeds: list[int]  # initial-noise seed of each
    metas: list[dict]  # prompt metadata of each
    n_total: int
    n_groups: int
    epoch: int
    x0: torch.Tensor | None = None  # [n, *latent] generated latents
    alive: torch.Tensor | None = None  # [n_total] bool: False where a reward fault dropped the group
    latents: torch.Tensor | None = None  # SDE rollouts: [n, steps + 1, *latent] the trajectory
    log_probs: torch.Tensor | None = None  # SDE rollouts: [n, steps] each step's log-probability
    sde_start: torch.Tensor | None = None  # Flow-GRPO-Fast: [n] first stochastic step of each sample's window
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # an outside algorithm's own per-sample tensors


@dataclass
class StepLoss:
    loss_sum: torch.Tensor  # sum of per-item loss terms over the micro-batch (the loop normalises)
    stats: dict[str, torch.Tensor]  # detached scalars, averaged into metrics.jsonl
