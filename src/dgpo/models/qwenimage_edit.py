"""Qwen-Image-Edit and Qwen-Image-Edit-Plus (2509: one to three source images): Qwen-Image's MMDiT, VAE, true
CFG with the negative prompt " " and its norm rescale, conditioned on source images twice, as their pipelines
do: Qwen2.5-VL reads each image with the instruction (the edit template, "Picture i:" before each image in
Plus), and each image's VAE latents join the sequence after the target's (packed 2x2, one ``img_shapes``
entry each), the output cut back to the target's tokens.

Sizes: every source is resized to the square training resolution first (Flow-GRPO's editing training does
so, then calls its pipeline with that resolution's area in place of the pipelines' 1024 x 1024): that image
is the VAE's input, and Qwen-Image-Edit's VL input too; Plus gives the VL its own copy at 384 x 384
(``CONDITION_IMAGE_SIZE``). Text conditions are padded to ``model.max_sequence_length`` plus the vision tokens.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from dgpo.errors import InputError
from dgpo.models.base import Cond
from dgpo.models.diffusers_common import load_pipeline
from dgpo.models.edit_common import EditConditioning
from dgpo.models.qwenimage import NEGATIVE_PROMPT, QwenImageFlowModel

PICTURE_TOKENS = 16  # room for the template's text around each image ("Picture i: ", the vision markers)
TEMPLATE_TOKENS = 16  # and after the instruction (the end of the user's turn, the assistant's header)


class QwenImageEditFlowModel(EditConditioning, QwenImageFlowModel):
    kind = "qwenimage_edit"
    pipeline_class = "QwenImageEditPipeline"

    @classmethod
    def load(cls, cfg) -> QwenImageEditFlowModel:
        import diffusers
        from diffusers.models.transformers import transformer_qwenimage

        if not hasattr(transformer_qwenimage, "compute_text_seq_len_from_mask"):  # diffusers PR #12702
            raise InputError(f"model.kind={cls.kind} needs a diffusers whose Qwen-Image transformer reads the text "
                             "mask (0.37 or later; tested with 0.42.1): pip install -U diffusers")
        if cfg.max_sequence_length > 1024:
            raise InputError(f"model.max_sequence_length={cfg.max_sequence_length}: Qwen-Image reads at most 1024 "
                             "prompt tokens")
        try:
            return cls(load_pipeline(getattr(diffusers, cls.pipeline_class), cfg.path, cfg.dtype), cfg)
        except InputError as e:
            if "processor" in str(e).lower() and importlib.util.find_spec("torchvision") is None:
                # transformers' Qwen2-VL processor (its video part) needs torchvision
                raise InputError(f"{e} (its Qwen2-VL processor needs torchvision: pip install torchvision)") from None
            raise

    def _encode_edits(self, prompts: list[str], images: list[list]) -> Cond:
        """The pipeline's text encoding of each instruction with its images (" " for ""), and the images' VAE
        latents [B, K, C, h, w], normalised per channel as the pipeline does."""
        prompts = [p or NEGATIVE_PROMPT for p in prompts]
        embeds, mask = self.pipe.encode_prompt(prompt=prompts, image=[imgs[0] for imgs in images], device=self.device,
                                               max_sequence_length=self.max_sequence_length)
        return self._with_sources(embeds, mask, images)

    def _with_sources(self, embeds: torch.Tensor, mask: torch.Tensor | None, images: list[list]) -> Cond:
        """The text condition with a mask (all ones where the pipeline gives none) and the sources' latents."""
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        side = self.resolution
        k = len(images[0])
        pixels = self.pipe.image_processor.preprocess([im for imgs in images for im in imgs], side, side)
        vae = self.pipe.vae
        z = self._vae_latents(pixels.unsqueeze(2))[:, :, 0]
        mean = torch.tensor(vae.config.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
        z = ((z - mean) / std).float()
        return {"embeds": embeds, "mask": mask, "source": z.view(len(images), k, *z.shape[1:])}

    def _cache_entry(self, enc: Cond, i: int) -> Cond:
        return {**super()._cache_entry(enc, i), "source": enc["source"][i : i + 1]}

    def _collate(self, entries: list[Cond]) -> Cond:
        """Text padded with masked zeros to one length for every condition of the model (so that any two
        concatenate), the sources stacked."""
        k = entries[0]["source"].shape[1]
        n = self.max_sequence_length + k * (self._vision_tokens() + PICTURE_TOKENS) + TEMPLATE_TOKENS
        longest = max(e["mask"].shape[1] for e in entries)
        if longest > n:
            raise InputError(f"model.kind={self.kind}: an instruction with its images is {longest} tokens, more than "
                             f"the {n} of model.max_sequence_length={self.max_sequence_length} and the images")
        pad = [n - e["mask"].shape[1] for e in entries]
        return {"embeds": torch.cat([F.pad(e["embeds"], (0, 0, 0, p)) for e, p in zip(entries, pad)]),
                "mask": torch.cat([F.pad(e["mask"], (0, p)) for e, p in zip(entries, pad)]),
                "source": torch.cat([e["source"] for e in entries])}

    def _vision_tokens(self) -> int:
        """Qwen2.5-VL tokens of one source image as the processor sizes it."""
        if getattr(self, "_n_vision", None) is None:
            from PIL import Image

            side = self._vl_side()
            proc = self.pipe.processor.image_processor
            grid = proc(images=[Image.new("RGB", (side, side))], return_tensors="pt")["image_grid_thw"][0]
            self._n_vision = int(grid.prod()) // int(proc.merge_size) ** 2
        return self._n_vision

    def _vl_side(self) -> int:
        return self.resolution

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        b, c, h, w = x_t.shape
        dtype = self._compute_dtype()
        src = cond["source"].to(self.device, dtype)
        k, hs, ws = src.shape[1], src.shape[-2], src.shape[-1]
        pack = self.pipe._pack_latents
        tokens = torch.cat([pack(x_t.to(dtype), b, c, h, w), *(pack(src[:, j], b, c, hs, ws) for j in range(k))], 1)
        embeds, mask = self._trimmed(cond)
        shapes = [[(1, h // 2, w // 2), *[(1, hs // 2, ws // 2)] * k]] * b
        out = self.denoiser(hidden_states=tokens, timestep=self._time(t, b) / 1000,
                            encoder_hidden_states=embeds.to(dtype), encoder_hidden_states_mask=mask,
                            img_shapes=shapes, return_dict=False)[0]
        return self._unpack(out[:, : (h // 2) * (w // 2)], h, w).to(x_t.dtype)


class QwenImageEditPlusFlowModel(QwenImageEditFlowModel):
    """Up to three source images per row (every row of a prompt file as many: they are batched together)."""

    kind = "qwenimage_edit_plus"
    pipeline_class = "QwenImageEditPlusPipeline"
    max_sources = 3  # the model card's range (1 to 3 images)
    same_source_count = True

    def _encode_edits(self, prompts: list[str], images: list[list]) -> Cond:
        """Row by row (the pipeline's template numbers one row's pictures): each image resized for the VL to
        ``CONDITION_IMAGE_SIZE``'s area (the pipeline's resize, Lanczos), the instruction (" " for "")."""
        side = self._vl_side()
        enc = []
        for prompt, imgs in zip(prompts, images):
            vl = [self.pipe.image_processor.resize(im, side, side) for im in imgs]
            embeds, mask = self.pipe.encode_prompt(prompt=[prompt or NEGATIVE_PROMPT], image=vl, device=self.device,
                                                   max_sequence_length=self.max_sequence_length)
            enc.append(self._cache_entry(self._with_sources(embeds, mask, [imgs]), 0))
        return self._collate(enc)

    def _vl_side(self) -> int:
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

        return int(plus.calculate_dimensions(plus.CONDITION_IMAGE_SIZE, 1.0)[0])
