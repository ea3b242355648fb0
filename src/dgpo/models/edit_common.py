"""What the diffusers editing families (FLUX.1 Kontext, Qwen-Image-Edit and its Plus variant) share: the
condition of a prompt row is its instruction and its source images (``source_images``, from an edit prompt
file: :mod:`dgpo.data.edits`), encoded once per (instruction, images) and cached like a text family's
prompts, and each source image is resized to the square training resolution first (PIL's bicubic, as the
official Flow-GRPO editing scripts do before calling their pipelines). CFG's unconditional branch keeps the
row's images with the empty instruction (``dgpo.models.base.encode_nulls``), as the pipelines' negative
branch does.
"""

from __future__ import annotations

import json

import torch

from dgpo.data.edits import check_sources, open_source
from dgpo.errors import InputError
from dgpo.models.base import Cond

KEY_PREFIX = "\x00edit:"  # cache keys of (instruction, source images), never a user's prompt


class EditConditioning:
    """Mixin for a diffusers adapter; the family implements ``_encode_edits(prompts, images) -> Cond`` with
    ``images`` one list of PIL images per prompt, already at the training resolution."""

    kind = "edit"
    max_sources = 1  # source images per row
    same_source_count = False  # rows must have as many (their source tokens are batched together)

    def check_metas(self, metas: list[dict], key: str = "") -> None:
        """Every row can be encoded: it has source images, not too many, square (one-line errors, after
        ``key``: the config key the rows come from)."""
        try:
            check_sources(metas, f"model.kind={self.kind}", self.max_sources, square=True,
                          same_count=self.same_source_count)
        except InputError as e:
            raise InputError(f"{key}: {e}" if key else str(e)) from None

    def encode_metas(self, metas: list[dict]) -> Cond:
        """The condition of each row: its instruction and source images (cached per pair)."""
        self.check_metas(metas)
        keys = [KEY_PREFIX + json.dumps([m["prompt"], list(m["source_images"])]) for m in metas]
        return super().encode_prompts(keys)

    def encode_prompts(self, prompts: list[str]) -> Cond:
        raise InputError(f"model.kind={self.kind} edits images: a condition is an instruction and its source "
                         "images, from an edit prompt file (JSON lines with 'prompt' and 'source'), not a prompt "
                         "alone")

    def _encode(self, keys: list[str]) -> Cond:
        rows = [json.loads(k[len(KEY_PREFIX):]) for k in keys]
        self._need("vae")
        side = self.resolution
        images = [[_square(open_source(p), side) for p in paths] for _, paths in rows]
        return self._encode_edits([prompt for prompt, _ in rows], images)

    def _encode_edits(self, prompts: list[str], images: list[list]) -> Cond:  # pragma: no cover - abstract
        raise NotImplementedError

    def _vae_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE's latent means of preprocessed images [B, 3, (1,) H, W] in [-1, 1] (the pipelines'
        ``retrieve_latents(..., sample_mode="argmax")``), in the VAE's dtype and on the model's device."""
        vae = self.pipe.vae
        return vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode()


def _square(img, side: int):
    """``img`` at side x side pixels (PIL's bicubic; unchanged when it is that size already)."""
    from PIL import Image

    return img if img.size == (side, side) else img.resize((side, side), Image.BICUBIC)
