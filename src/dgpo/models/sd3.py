"""Stable Diffusion 3 / 3.5 (the paper's backbone): MMDiT transformer, three text encoders, CFG with
the empty negative prompt, time shift 3 from its scheduler, latents through the VAE's shift/scale.
Prompts (and the empty negative prompt) are encoded with 128 T5 tokens, as the official DGPO and
Flow-GRPO code does: SD3 does not mask T5 padding, so the length changes the conditioning."""

from __future__ import annotations

import torch

from dgpo.models.base import Cond
from dgpo.models.diffusers_common import DiffusersFlowModel, load_pipeline

# the official DGPO / Flow-GRPO target modules for SD3.5
SD3_LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]


class SD3FlowModel(DiffusersFlowModel):
    lora_targets = SD3_LORA_TARGETS
    repeated_blocks = ["JointTransformerBlock"]
    default_max_sequence_length = 128

    @classmethod
    def load(cls, cfg) -> SD3FlowModel:
        from diffusers import StableDiffusion3Pipeline

        return cls(load_pipeline(StableDiffusion3Pipeline, cfg.path, cfg.dtype), cfg)

    def _encode(self, prompts: list[str]) -> Cond:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length)
        return {"embeds": embeds, "pooled": pooled}

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self._compute_dtype()
        out = self.denoiser(hidden_states=x_t.to(dtype), timestep=self._time(t, len(x_t)),
                            encoder_hidden_states=cond["embeds"].to(dtype),
                            pooled_projections=cond["pooled"].to(dtype), return_dict=False)[0]
        return out.to(x_t.dtype)

    def latent_shape(self) -> tuple[int, int, int]:
        hw = self._latent_hw()
        return (int(self.net_config.in_channels), hw, hw)
