"""FLUX.1 (dev: guidance embedding and no CFG; schnell: neither): latents packed 2x2 into tokens,
the dynamic (resolution-dependent) time shift, CLIP pooled + T5 token embeddings. The trainer sees
unpacked latents [B, C, H, W]; packing happens around the transformer call."""

from __future__ import annotations

import math

import numpy as np
import torch

from dgpo.models.base import Cond
from dgpo.models.diffusers_common import DiffusersFlowModel, load_pipeline
from dgpo.schedules import Grid, rollout_grid

FLUX_LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                     "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]


class FluxFlowModel(DiffusersFlowModel):
    lora_targets = FLUX_LORA_TARGETS
    repeated_blocks = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]
    default_max_sequence_length = 512

    @classmethod
    def load(cls, cfg) -> FluxFlowModel:
        from diffusers import FluxPipeline

        return cls(load_pipeline(FluxPipeline, cfg.path, cfg.dtype), cfg)

    def _native_resolution(self) -> int:
        return int(self.pipe.default_sample_size) * int(self.pipe.vae_scale_factor)

    def _encode(self, prompts: list[str]) -> Cond:
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                    max_sequence_length=self.max_sequence_length)
        return {"embeds": embeds, "pooled": pooled}

    def latent_shape(self) -> tuple[int, int, int]:
        hw = 2 * (self.resolution // (int(self.pipe.vae_scale_factor) * 2))
        return (int(self.net_config.in_channels) // 4, hw, hw)

    def default_shift(self) -> float:
        """exp(mu), mu = Flux's calculate_shift(image tokens): the same grid as its dynamic shifting."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = self.scheduler_config
        if not c.get("use_dynamic_shifting", False):
            return float(c.get("shift", 1.0))
        _, h, w = self.latent_shape()
        mu = calculate_shift((h // 2) * (w // 2), c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        return math.exp(mu)

    def rollout_grid(self, method: str, steps: int, shift: float) -> Grid:
        """Euler: the scheduler's dynamic shift (mu = log shift) on the sigmas FluxPipeline passes,
        linspace(1, 1/steps, steps); DPM-Solver: the official flow config with ``flow_shift=shift``."""
        if method == "euler" and self.scheduler_config.get("use_dynamic_shifting"):
            return rollout_grid(method, steps, shift, self.scheduler_config,
                                sigmas=np.linspace(1.0, 1 / steps, steps), mu=math.log(shift))
        return super().rollout_grid(method, steps, shift)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        b, c, h, w = x_t.shape
        dtype = self._compute_dtype()
        packed = self.pipe._pack_latents(x_t.to(dtype), b, c, h, w)
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, self.device, dtype)
        txt_ids = torch.zeros(cond["embeds"].shape[1], 3, device=self.device, dtype=dtype)
        guidance = None
        if self.net_config.guidance_embeds:
            guidance = torch.full((b,), self.cfg.guidance_scale, device=self.device, dtype=torch.float32)
        out = self.denoiser(hidden_states=packed, timestep=self._time(t, b) / 1000, guidance=guidance,
                            pooled_projections=cond["pooled"].to(dtype), encoder_hidden_states=cond["embeds"].to(dtype),
                            txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        vs = int(self.pipe.vae_scale_factor)
        return self.pipe._unpack_latents(out, h * vs, w * vs, vs).to(x_t.dtype)
