"""Wan (text-to-video) on diffusers' Wan parts: ``WanTransformer3DModel``, ``AutoencoderKLWan`` and the UMT5
text encoder, as ``WanPipeline`` holds them.

* Wan2.1 T2V (1.3B, 14B): one transformer, latents ``[B, 16, (F - 1) / 4 + 1, H / 8, W / 8]``.
* Wan2.2 T2V-A14B: two experts, the high-noise ``transformer`` at timesteps >= ``boundary_ratio`` x 1000
  and ``transformer_2`` below, each with its own CFG scale (``sampler.cfg_scale`` and
  ``model.guidance_scale_2``). Both sit in one module (:class:`WanExperts`) that routes each sample by
  its own timestep, so that LoRA adapts both, and DDP, FSDP2, the EMAs and checkpoints see one network.
* Wan2.2 TI2V-5B: the 48-channel VAE (16x spatial) and per-token timesteps (``expand_timesteps``: every
  token gets the sample's timestep in text-to-video, as the pipeline passes it).

As ``WanPipeline.__call__`` does: prompts are cleaned, tokenized to ``model.max_sequence_length`` (512,
the pipeline's and Flow-GRPO's) and their embeddings zero-filled past each prompt's tokens (no mask
reaches the transformer); the negative prompt is ``""`` (the pipeline's default and Flow-GRPO's), which
is dgpo's unconditional prompt; the transformer gets the scheduler's timestep on the 1000 scale as it
is; latents are de-normalised with the VAE's per-channel ``latents_mean`` / ``latents_std`` before
decoding. The time shift is the model card's scheduler ``flow_shift`` (Wan2.1 480p: 3.0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dgpo.config.rules import VIDEO_SIZE_KEYS, check_video_size
from dgpo.errors import ConfigError, InputError
from dgpo.models.base import Cond
from dgpo.models.diffusers_common import DiffusersFlowModel, load_pipeline

# the official Flow-GRPO Wan2.1 LoRA list (scripts/train_wan2_1.py) names to_q / to_k / to_v / to_out.0 and
# the add_* projections; a text-to-video transformer has no add_* (only I2V's cross-attention has
# add_k_proj / add_v_proj), so these are the modules that list adapts: both attentions of every block
WAN_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
DEFAULT_FRAMES = 81  # WanPipeline.__call__'s default (5 s at 16 fps)
DEFAULT_SIZE = (480, 832)  # WanPipeline.__call__'s default height and width (480p)
LORA_FILE_2 = "pytorch_lora_weights_transformer_2.safetensors"  # Wan2.2's low-noise expert


class WanExperts(nn.Module):
    """Wan2.2's two experts as one network: per sample, ``transformer`` (high noise) where its timestep is
    >= ``boundary`` (``boundary_ratio`` x 1000, the pipeline's test ``t >= boundary_timestep``), else
    ``transformer_2``. A batch may mix both (training times are per group or per sample).

    Where an expert has no sample in a call it still runs, on one dummy token, its output added times
    zero: under grad, so that every trainable weight of both experts gets a gradient in every backward
    (DDP needs that, and it keeps a 1-process run equal to a 2-process one: an expert without samples
    gets zero gradients, never none); under FSDP2 always, so that every process runs the same forwards
    (each one all-gathers its shards)."""

    _no_split_modules = ["WanTransformerBlock"]  # FSDP2's auto-wrap units (accelerate reads this)

    def __init__(self, transformer: nn.Module, transformer_2: nn.Module, boundary: float):
        super().__init__()
        self.transformer, self.transformer_2, self.boundary = transformer, transformer_2, float(boundary)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()
        self.transformer_2.enable_gradient_checkpointing()

    def experts(self) -> dict[str, nn.Module]:
        """The experts by their pipeline attribute names."""
        return {"transformer": self.transformer, "transformer_2": self.transformer_2}

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                return_dict: bool = False, **kwargs) -> tuple[torch.Tensor]:
        t = timestep.reshape(len(hidden_states), -1)[:, 0]  # a sample's timestep (TI2V's per-token ones agree)
        high = t >= self.boundary
        every = torch.is_grad_enabled() or _sharded(self)
        out = None
        for expert, rows in ((self.transformer, high), (self.transformer_2, ~high)):
            idx = torch.nonzero(rows).squeeze(1)
            if len(idx) == len(rows):  # the whole batch: no copies (rollouts, one timestep per call)
                part = expert(hidden_states=hidden_states, timestep=timestep,
                              encoder_hidden_states=encoder_hidden_states, return_dict=False, **kwargs)[0]
                out = part if out is None else out + part
            elif len(idx):
                part = expert(hidden_states=hidden_states[idx], timestep=timestep[idx],
                              encoder_hidden_states=encoder_hidden_states[idx], return_dict=False, **kwargs)[0]
                if out is None:
                    out = part.new_zeros((len(rows), *part.shape[1:]))
                out = out.index_copy(0, idx, part)
            elif every:
                out = _zero_touch(expert, hidden_states, timestep, encoder_hidden_states, out)
        return (out,)


def _sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(next(module.parameters()), DTensor)


def _zero_touch(expert: nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, out):
    """``out`` plus zero times ``expert``'s output on one dummy token (one latent patch, one text token):
    every weight of the expert takes part at almost no cost."""
    p = expert.config.patch_size
    dummy = x.new_zeros((1, x.shape[1], *p))
    tt = t[:1, :1] if t.dim() == 2 else t[:1]
    y = expert(hidden_states=dummy, timestep=tt, encoder_hidden_states=text[:1, :1], return_dict=False)[0]
    zero = (y * 0).sum()
    return zero if out is None else out + zero


class WanFlowModel(DiffusersFlowModel):
    modality = "video"
    lora_targets = WAN_LORA_TARGETS
    repeated_blocks = ["WanTransformerBlock"]
    default_max_sequence_length = 512  # WanPipeline.__call__'s default, and Flow-GRPO's

    @classmethod
    def load(cls, cfg) -> WanFlowModel:
        from diffusers import WanPipeline

        return cls(load_pipeline(WanPipeline, cfg.path, cfg.dtype), cfg)

    def __init__(self, pipe, cfg):
        if getattr(pipe, "transformer", None) is None:
            raise InputError(f"model.path {cfg.path!r}: the Wan pipeline has no `transformer` (a folder with only "
                             "transformer_2 is not a text-to-video model dgpo trains)")
        super().__init__(pipe, cfg)
        self.boundary_ratio = cfg.boundary_ratio or pipe.config.get("boundary_ratio")
        second = getattr(pipe, "transformer_2", None)
        if second is not None and self.boundary_ratio is None:
            raise InputError(f"model.path {cfg.path!r}: a Wan pipeline with transformer_2 needs its boundary_ratio "
                             "(model_index.json) or model.boundary_ratio")
        if second is None and (cfg.boundary_ratio or cfg.guidance_scale_2):
            key = "model.boundary_ratio" if cfg.boundary_ratio else "model.guidance_scale_2"
            raise ConfigError(f"{key}: only Wan2.2's two-expert pipelines read it (this one has no transformer_2)")
        self.guidance_scale_2 = cfg.guidance_scale_2
        self.experts: WanExperts | None = None  # Wan2.2's two experts (self.denoiser, until LoRA wraps it)
        if second is not None:
            second.requires_grad_(False)
            if cfg.gradient_checkpointing:
                second.enable_gradient_checkpointing()
            self.experts = WanExperts(pipe.transformer, second, self.boundary_ratio * self._train_steps())
            self.denoiser = self.experts
        self.expand_timesteps = bool(pipe.config.get("expand_timesteps", False))
        self.frames = cfg.frames or DEFAULT_FRAMES
        self.width = cfg.width or (DEFAULT_SIZE[1] if not cfg.resolution else self.resolution)
        self._check_sizes(self.frames, self.resolution, self.width)

    # -- FlowModel
    def _encode(self, prompts: list[str]) -> Cond:
        """The pipeline's encoding: each prompt's token embeddings, zero-filled to max_sequence_length."""
        embeds, _ = self.pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False, device=self.device,
                                            max_sequence_length=self.max_sequence_length)
        return {"embeds": embeds}

    def _cache_entry(self, enc: Cond, i: int) -> Cond:
        """Prompt ``i`` without its zero fill (a short prompt's embedding is a few tokens of the 512)."""
        e = enc["embeds"][i]
        rows = torch.nonzero(e.ne(0).any(-1)).squeeze(1)
        n = int(rows[-1]) + 1 if len(rows) else 0
        return {"embeds": enc["embeds"][i : i + 1, :n]}

    def _collate(self, entries: list[Cond]) -> Cond:
        """Zero-filled back to max_sequence_length, as the pipeline passes them (bit for bit)."""
        pad = torch.nn.functional.pad
        return {"embeds": torch.cat([pad(e["embeds"], (0, 0, 0, self.max_sequence_length - e["embeds"].shape[1]))
                                     for e in entries])}

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self._compute_dtype()
        timestep = self._time(t, len(x_t))
        if self.expand_timesteps:  # TI2V-5B: one timestep per token (the pipeline's mask is all ones in T2V)
            pt, ph, pw = self.net_config.patch_size
            f, h, w = x_t.shape[2:]
            timestep = timestep[:, None].expand(len(x_t), (f // pt) * (h // ph) * (w // pw))
        out = self.denoiser(hidden_states=x_t.to(dtype), timestep=timestep,
                            encoder_hidden_states=cond["embeds"].to(dtype), return_dict=False)[0]
        return out.to(x_t.dtype)

    def cfg_scales(self, t: torch.Tensor, scale):
        """Per sample, the CFG scale of the expert that denoises it (WanPipeline: ``guidance_scale`` for the
        high-noise ``transformer``, ``guidance_scale_2`` for ``transformer_2``, which defaults to the first)."""
        if self.experts is None or not self.guidance_scale_2:
            return scale
        high = t.to(torch.float32) >= self.boundary_ratio * self._train_steps()
        return torch.where(high, torch.tensor(float(scale)), torch.tensor(float(self.guidance_scale_2)))

    def latent_shape(self) -> tuple[int, int, int, int]:
        s = int(self.pipe.vae_scale_factor_spatial)
        f = (self.frames - 1) // int(self.pipe.vae_scale_factor_temporal) + 1
        return (int(self.net_config.in_channels), f, self.resolution // s, self.width // s)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> videos [B, F, 3, H, W] in [0, 1] (the pipeline's de-normalisation; one video at a time,
        which bounds the VAE's memory)."""
        vae = self._need("vae")
        view = (1, -1, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(view).to(latents.device, vae.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(view).to(latents.device, vae.dtype)
        videos = [vae.decode(z.unsqueeze(0).to(vae.dtype) / inv_std + mean, return_dict=False)[0]
                  for z in latents]
        return (torch.cat(videos).float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)

    def set_size(self, frames: int = 0, height: int = 0, width: int = 0, keys=VIDEO_SIZE_KEYS) -> None:
        """Sample at another frame count or size (``dgpo sample --frames/--height/--width``; 0 keeps the
        current one); a size this pipeline cannot make is a config error naming ``keys``."""
        size = (frames or self.frames, height or self.resolution, width or self.width)
        self._check_sizes(*size, keys)
        self.frames, self.resolution, self.width = size

    # -- LoRA files (dgpo export, --lora)
    def save_lora(self, out: Path, sd: dict, meta: dict, weight_name: str) -> Path:
        """``WanPipeline.save_lora_weights``: one file; Wan2.2 a second one for ``transformer_2`` (both with the
        ``transformer.`` prefix, what ``load_lora_weights(..., load_into_transformer_2=True)`` reads)."""
        from diffusers import WanPipeline

        parts = {"": sd} if self.experts is None else {
            name: {k.removeprefix(name + "."): v for k, v in sd.items() if k.startswith(name + ".")}
            for name in ("transformer", "transformer_2")}
        for name, part in parts.items():
            WanPipeline.save_lora_weights(out, transformer_lora_layers=part, transformer_lora_adapter_metadata=meta,
                                          weight_name=weight_name if name != "transformer_2" else LORA_FILE_2)
        return out / weight_name

    def lora_parts(self, weight_name: str) -> list[tuple[str, str, dict]]:
        """(pipeline component, file, ``load_lora_weights`` arguments) of an exported LoRA."""
        if self.experts is None:
            return [("transformer", weight_name, {})]
        return [("transformer", weight_name, {}),
                ("transformer_2", LORA_FILE_2, {"load_into_transformer_2": True})]

    def place_denoiser(self, net: nn.Module) -> None:
        """A merged denoiser back into the pipeline's slots (``dgpo export --merge``)."""
        for name, module in (net.experts() if isinstance(net, WanExperts) else {"transformer": net}).items():
            setattr(self.pipe, name, module)

    # -- helpers
    def _native_resolution(self) -> int:
        return DEFAULT_SIZE[0]

    def _train_steps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    def _check_sizes(self, frames: int, height: int, width: int, keys=VIDEO_SIZE_KEYS) -> None:
        """Sizes this pipeline's VAE and the transformer's patches cannot make, as config errors naming ``keys``."""
        _, ph, pw = self.net_config.patch_size
        check_video_size(frames, height, width, keys, temporal=int(self.pipe.vae_scale_factor_temporal),
                         vae=int(self.pipe.vae_scale_factor_spatial), patch=(ph, pw), note="")
