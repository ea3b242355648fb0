"""Qwen-Image: a 20B MMDiT with a Qwen2.5-VL text encoder (its last hidden states, the chat template's
system part dropped, with an attention mask), the Wan-style VAE (one-frame 3D latents normalised per
channel) and FLUX's 2x2 latent packing and dynamic time shift (exponential, stretched to end at
sigma 0.02 on the Euler grid). CFG is the pipeline's "true CFG" with the negative prompt " " and its
norm rescale: per packed token, the guided velocity is scaled back to the conditional one's norm (as
the pipeline and the official Flow-GRPO Qwen-Image code do)."""

from __future__ import annotations

import torch

from dgpo.errors import InputError
from dgpo.models.base import Cond
from dgpo.models.diffusers_common import load_pipeline
from dgpo.models.flux import FluxFlowModel

# the official Flow-GRPO Qwen-Image target modules: attention and both streams' MLPs
QWEN_LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                     "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
                     "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2"]
NEGATIVE_PROMPT = " "  # the pipeline's documented negative prompt, and the official training's


class QwenImageFlowModel(FluxFlowModel):
    """Shares FLUX's latent layout (``latent_shape``), native resolution and dynamic-shift grids."""

    lora_targets = QWEN_LORA_TARGETS
    repeated_blocks = ["QwenImageTransformerBlock"]
    default_max_sequence_length = 512  # the pipeline's default (its limit is 1024)

    @classmethod
    def load(cls, cfg) -> QwenImageFlowModel:
        from diffusers import QwenImagePipeline
        from diffusers.models.transformers import transformer_qwenimage

        if not hasattr(transformer_qwenimage, "compute_text_seq_len_from_mask"):  # diffusers PR #12702
            raise InputError("model.kind=qwenimage needs a diffusers whose Qwen-Image transformer reads the text "
                             "mask (0.37 or later; tested with 0.42.1): pip install -U diffusers")
        if cfg.max_sequence_length > 1024:
            raise InputError(f"model.max_sequence_length={cfg.max_sequence_length}: Qwen-Image reads at most 1024 "
                             "prompt tokens")
        return cls(load_pipeline(QwenImagePipeline, cfg.path, cfg.dtype), cfg)

    def _encode(self, prompts: list[str]) -> Cond:
        """The pipeline's encoding (padded to the batch's longest prompt), "" read as its negative
        prompt " "."""
        prompts = [p or NEGATIVE_PROMPT for p in prompts]
        embeds, mask = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                               max_sequence_length=self.max_sequence_length)
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return {"embeds": embeds, "mask": mask}

    def _cache_entry(self, enc: Cond, i: int) -> Cond:
        """Prompt ``i`` without its padding (the masks are prefixes: the pipeline packs the valid tokens)."""
        n = int(enc["mask"][i].sum())
        return {"embeds": enc["embeds"][i : i + 1, :n], "mask": enc["mask"][i : i + 1, :n]}

    def _collate(self, entries: list[Cond]) -> Cond:
        """Padded with masked zeros to ``max_sequence_length``, so that any two conditions concatenate;
        ``velocity`` trims a batch back to its longest prompt, so the padding costs no compute (the
        pipeline pads to the batch's longest)."""
        pad = [self.max_sequence_length - e["mask"].shape[1] for e in entries]
        return {"embeds": torch.cat([torch.nn.functional.pad(e["embeds"], (0, 0, 0, n)) for e, n in zip(entries, pad)]),
                "mask": torch.cat([torch.nn.functional.pad(e["mask"], (0, n)) for e, n in zip(entries, pad)])}

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        b, c, h, w = x_t.shape
        dtype = self._compute_dtype()
        embeds, mask = self._trimmed(cond)
        out = self.denoiser(hidden_states=self.pipe._pack_latents(x_t.to(dtype), b, c, h, w),
                            timestep=self._time(t, b) / 1000, encoder_hidden_states=embeds.to(dtype),
                            encoder_hidden_states_mask=mask, img_shapes=[[(1, h // 2, w // 2)]] * b,
                            return_dict=False)[0]
        return self._unpack(out, h, w).to(x_t.dtype)

    def unused_modules(self) -> list[str]:
        """The last block's text stream after attention: the block's text output is discarded (only the
        image stream reaches the output layer), so its output projection and MLP never get a gradient.
        The official code adapts them anyway; the adapters there never train."""
        last = f"transformer_blocks.{int(self.net_config.num_layers) - 1}"
        return [f"{last}.attn.to_add_out", f"{last}.txt_mlp"]

    def guide(self, v_c: torch.Tensor, v_u: torch.Tensor, scale: float) -> torch.Tensor:
        """v_u + s (v_c - v_u), rescaled per packed token to the norm of v_c (QwenImagePipeline)."""
        b, c, h, w = v_c.shape
        cond = self.pipe._pack_latents(v_c, b, c, h, w)
        comb = self.pipe._pack_latents(v_u + scale * (v_c - v_u), b, c, h, w)
        comb = comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        return self._unpack(comb, h, w)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self._need("vae")
        view = (1, -1, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, dtype=vae.dtype, device=latents.device).view(view)
        std = torch.tensor(vae.config.latents_std, dtype=vae.dtype, device=latents.device).view(view)
        images = vae.decode(latents.to(vae.dtype).unsqueeze(2) * std + mean, return_dict=False)[0][:, :, 0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def _trimmed(self, cond: Cond) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's embeddings cut to its longest prompt, and its mask (None where no token is
        padding, as the pipeline passes it). One host sync per forward, as the official loop's
        ``mask.sum(1).tolist()``."""
        mask = cond["mask"]
        lengths = mask.sum(1)
        shortest, longest = torch.stack([lengths.min(), lengths.max()]).tolist()
        return cond["embeds"][:, :longest], None if shortest == longest else mask[:, :longest]

    def _unpack(self, packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
        vs = int(self.pipe.vae_scale_factor)
        return self.pipe._unpack_latents(packed, h * vs, w * vs, vs)[:, :, 0]
