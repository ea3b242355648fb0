"""The model interface the trainer drives; the toy model and every diffusers adapter implement it.

A condition (``Cond``) is a dict of tensors whose first dimension is the batch, so that it can be
indexed, repeated and concatenated without knowing the model.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from dgpo.schedules import Grid

Cond = dict[str, torch.Tensor]


class FlowModel(Protocol):
    """A text-conditioned rectified-flow model (t = 1 is noise, velocity target eps - x0)."""

    denoiser: nn.Module
    """The network that predicts velocity; LoRA wraps it, the trainer optimises it."""
    lora_targets: list[str]
    """Module-name suffixes that LoRA adapts (attention projections)."""
    frozen_prefixes: tuple[str, ...]
    """Parameter-name prefixes inside ``denoiser`` that stay frozen even in full fine-tuning."""
    repeated_blocks: list[str]
    """Class names of the denoiser's repeated blocks, compiled by region with ``train.compile``
    ([]: the network is compiled whole)."""

    def encode_prompts(self, prompts: list[str]) -> Cond:
        """Frozen text encoding; "" is the unconditional prompt used by CFG."""
        ...

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """v(x_t [B, *latent_shape], t [B], cond) -> [B, *latent_shape]. ``t`` is the diffusers timestep on the
        1000-step scale, as a rollout grid holds it (int64 999, 963, ... on the DPM grid; float
        1000 sigma on the Euler grid and for continuous training times); each family converts it as
        its pipeline does."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, *latent_shape] -> images [B, 3, H', W'] in [0, 1], or for a video model
        (``modality == "video"``) videos [B, F, 3, H', W'] in [0, 1]."""
        ...

    def latent_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image latent; (C, F', H, W) of one video latent (F' latent frames)."""
        ...

    device: torch.device
    """Where the denoiser runs; inputs are moved there."""

    def to(self, device) -> FlowModel:
        """Move the model (and the parts that stay resident) to ``device``."""
        ...

    def default_shift(self) -> float:
        """The family's own time shift (``sampler.shift = 0`` uses it)."""
        ...

    def rollout_grid(self, method: str, steps: int, shift: float) -> Grid:
        """The ``steps``-step grid of ``method`` ("dpm" / "euler") with time shift ``shift``, from the
        family's diffusers scheduler (``dgpo.schedules.rollout_grid``)."""
        ...

    # Optional hooks:
    # - ``modality``: "image" (the default when absent) or "video"; rewards declare theirs alike and
    #   the loop refuses a pair that does not match (``dgpo.rewards.check_modality``);
    # - ``guide(v_c, v_u, scale) -> v``, a family's own CFG combination (Qwen-Image's norm rescale);
    #   without it ``guide`` below uses v_u + scale (v_c - v_u);
    # - ``cfg_scales(t [B], scale) -> [B] or scale``, a CFG scale per sample from its timestep (Wan2.2: the
    #   high-noise expert's ``scale``, the low-noise one's ``model.guidance_scale_2``);
    # - ``encode_metas(metas) -> Cond``, the condition of prompt metadata rows, for families conditioned on
    #   more than text (editing: each row's ``source_images``); ``encode_rows`` / ``encode_nulls`` below
    #   call it instead of ``encode_prompts``, with the prompt blanked for CFG's unconditional branch;
    # - ``source_images(metas) -> [B, 3, H, W]`` in [0, 1], an editing family's sources: the trainer's
    #   before / after comparison shows source | base | trained;
    # - ``unused_modules() -> list[str]``, names of modules inside ``denoiser`` whose outputs never
    #   reach the velocity (Qwen-Image's last block's text stream): neither adapted nor trained, since
    #   they would never get a gradient (and DDP needs every trained parameter to get one).


def encode_rows(model: FlowModel, metas: list[dict]) -> Cond:
    """The condition of each metadata row: its prompt, or for a family with ``encode_metas`` (editing)
    the whole row (prompt and source images)."""
    own = getattr(model, "encode_metas", None)
    return own(metas) if own is not None else model.encode_prompts([m["prompt"] for m in metas])


def encode_nulls(model: FlowModel, metas: list[dict]) -> Cond:
    """CFG's unconditional condition of each row: the empty prompt (an editing family keeps each row's
    source images, as its pipeline's negative branch does)."""
    own = getattr(model, "encode_metas", None)
    return own([{**m, "prompt": ""} for m in metas]) if own is not None else model.encode_prompts([""] * len(metas))


def cond_index(cond: Cond, idx: torch.Tensor | slice) -> Cond:
    return {k: v[idx] for k, v in cond.items()}


def cond_cat(conds: list[Cond]) -> Cond:
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


def cond_where(mask: torch.Tensor, a: Cond, b: Cond) -> Cond:
    """Per sample: ``a`` where ``mask`` [B] is true, else ``b``."""
    return {k: torch.where(mask.view(-1, *([1] * (a[k].dim() - 1))), a[k], b[k]) for k in a}


def guide(model: FlowModel, v_c: torch.Tensor, v_u: torch.Tensor, scale: float,
          t: torch.Tensor | None = None) -> torch.Tensor:
    """The guided velocity v_u + s (v_c - v_u), or the family's own combination where it has one
    (a ``guide(v_c, v_u, scale)`` method: Qwen-Image rescales it to the norm of v_c). With the timesteps
    ``t`` [B] and a family's ``cfg_scales(t, scale)``, s is per sample (Wan2.2: each expert its own)."""
    per_sample = getattr(model, "cfg_scales", None)
    if per_sample is not None and t is not None:
        s = per_sample(t, scale)
        if isinstance(s, torch.Tensor):
            scale = s.to(v_c.device, v_c.dtype).view(-1, *([1] * (v_c.dim() - 1)))
    own = getattr(model, "guide", None)
    return own(v_c, v_u, scale) if own is not None else v_u + scale * (v_c - v_u)


def cfg_velocity(model: FlowModel, x: torch.Tensor, t: torch.Tensor, cond: Cond, null: Cond,
                 scale: float) -> torch.Tensor:
    """Classifier-free guidance (``guide``), both branches batched in one call; s = 1 is conditional only."""
    if scale == 1.0:
        return model.velocity(x, t, cond)
    v = model.velocity(torch.cat([x, x]), torch.cat([t, t]), cond_cat([cond, null]))
    v_c, v_u = v.chunk(2)
    return guide(model, v_c, v_u, scale, t)
