"""FLUX.1 Kontext (dev): FLUX.1-dev's transformer, its embedded guidance (no CFG) and dynamic shift, conditioned
on a source image whose VAE latents join the sequence after the target's (FluxKontextPipeline): packed 2x2
like the target, their position ids on the same grid with the first coordinate 1 (the target's 0), the output
cut back to the target's tokens. The source is resized to the square training resolution (as Flow-GRPO's
Kontext training does, and FluxKontextPipeline with ``_auto_resize=False`` then keeps it), shifted and scaled
like the target's latents. The time shift comes from the target's token count only, as in the pipeline."""

from __future__ import annotations

import torch

from dgpo.models.base import Cond
from dgpo.models.diffusers_common import load_pipeline
from dgpo.models.edit_common import EditConditioning
from dgpo.models.flux import FluxFlowModel

# the official Flow-GRPO Kontext target modules: attention, both streams' MLPs and the single blocks' MLP
KONTEXT_LORA_TARGETS = ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                        "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                        "ff_context.net.2", "proj_mlp"]


class FluxKontextFlowModel(EditConditioning, FluxFlowModel):
    kind = "flux_kontext"
    lora_targets = KONTEXT_LORA_TARGETS

    @classmethod
    def load(cls, cfg) -> FluxKontextFlowModel:
        from diffusers import FluxKontextPipeline

        return cls(load_pipeline(FluxKontextPipeline, cfg.path, cfg.dtype), cfg)

    def _encode_edits(self, prompts: list[str], images: list[list]) -> Cond:
        cond = FluxFlowModel._encode(self, prompts)
        side = self.resolution
        pixels = self.pipe.image_processor.preprocess([imgs[0] for imgs in images], side, side)
        vae = self.pipe.vae
        latents = (self._vae_latents(pixels) - vae.config.shift_factor) * vae.config.scaling_factor
        return {**cond, "source": latents.float()}

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        b, c, h, w = x_t.shape
        dtype = self._compute_dtype()
        src = cond["source"]
        hs, ws = src.shape[-2:]
        pipe = self.pipe
        tokens = torch.cat([pipe._pack_latents(x_t.to(dtype), b, c, h, w),
                            pipe._pack_latents(src.to(self.device, dtype), b, c, hs, ws)], dim=1)
        src_ids = pipe._prepare_latent_image_ids(b, hs // 2, ws // 2, self.device, dtype)
        src_ids[..., 0] = 1  # the source's ids: the target's grid, first coordinate 1 (FluxKontextPipeline)
        img_ids = torch.cat([pipe._prepare_latent_image_ids(b, h // 2, w // 2, self.device, dtype), src_ids])
        txt_ids = torch.zeros(cond["embeds"].shape[1], 3, device=self.device, dtype=dtype)
        guidance = None
        if self.net_config.guidance_embeds:
            guidance = torch.full((b,), self.cfg.guidance_scale, device=self.device, dtype=torch.float32)
        out = self.denoiser(hidden_states=tokens, timestep=self._time(t, b) / 1000, guidance=guidance,
                            pooled_projections=cond["pooled"].to(dtype), encoder_hidden_states=cond["embeds"].to(dtype),
                            txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        vs = int(pipe.vae_scale_factor)
        return pipe._unpack_latents(out[:, : (h // 2) * (w // 2)], h * vs, w * vs, vs).to(x_t.dtype)
