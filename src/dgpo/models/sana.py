"""Sana: linear-attention DiT with a Gemma-2 text encoder (token embeddings + attention mask) and the
deep-compression autoencoder; flow prediction sampled by DPM-Solver with its scheduler's flow shift."""

from __future__ import annotations

import torch

from dgpo.models.base import Cond
from dgpo.models.diffusers_common import DiffusersFlowModel, load_pipeline

SANA_LORA_TARGETS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                     "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]


class SanaFlowModel(DiffusersFlowModel):
    lora_targets = SANA_LORA_TARGETS
    repeated_blocks = ["SanaTransformerBlock"]
    default_max_sequence_length = 300

    @classmethod
    def load(cls, cfg) -> SanaFlowModel:
        from diffusers import SanaPipeline

        return cls(load_pipeline(SanaPipeline, cfg.path, cfg.dtype), cfg)

    def _encode(self, prompts: list[str]) -> Cond:
        embeds, mask, _, _ = self.pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False,
                                                     device=self.device, complex_human_instruction=None,
                                                     max_sequence_length=self.max_sequence_length)
        return {"embeds": embeds, "mask": mask}

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self._compute_dtype()
        timestep = self._time(t, len(x_t)) * self.net_config.timestep_scale
        out = self.denoiser(x_t.to(dtype), encoder_hidden_states=cond["embeds"].to(dtype),
                            encoder_attention_mask=cond["mask"], timestep=timestep, return_dict=False)[0]
        return out.to(x_t.dtype)

    def latent_shape(self) -> tuple[int, int, int]:
        hw = self._latent_hw()
        return (int(self.net_config.in_channels), hw, hw)
