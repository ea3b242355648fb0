"""CLIP (transformers) image and text embeddings shared by the CLIP-based rewards, and CLIPScore.

Images are scored as the 8-bit images they would be saved as, preprocessed as OpenAI's and open_clip's
ViT-L/14 transform (PIL bicubic resize of the shortest side, centre crop, OpenAI mean/std: the
transform the LAION aesthetic MLP was trained behind). Embeddings are L2-normalised. One model per
(path, device) is loaded per process, so ``aesthetic`` and ``clipscore`` in one multi-reward share it.

CLIPScore: ``100 * max(cos(image, prompt), 0)`` per image, torchmetrics' scale (Hessel et al. 2021
use 2.5 instead of 100); prompts longer than CLIP's 77 tokens are truncated, as torchmetrics does.
Default weights: ``openai/clip-vit-large-patch14`` (torchmetrics' default; OpenAI's licence, MIT).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from dgpo.errors import InputError
from dgpo.rewards.geneval.colors import DEFAULT_CLIP, clip_preprocess


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images [B, 3, H, W] in [0, 1] -> the uint8 [B, H, W, 3] a PNG of them holds."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _normalised(out) -> torch.Tensor:
    f = getattr(out, "pooler_output", out)  # transformers 5: an output object; 4.x: a tensor
    return (f / f.norm(dim=-1, keepdim=True)).float()


class CLIPEncoder:
    """L2-normalised CLIP embeddings of images [B, 3, H, W] in [0, 1] and of prompts, in batches."""

    def __init__(self, path: str = "", device: str | torch.device = "cpu", batch_size: int = 32):
        from transformers import CLIPModel, CLIPTokenizer

        path = path or DEFAULT_CLIP
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(path)
            self.model = CLIPModel.from_pretrained(path).eval().requires_grad_(False).to(device)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot load CLIP {path!r} (reward.clip_path): {e}") from None
        self.device, self.batch_size = torch.device(device), batch_size
        self.size = int(self.model.config.vision_config.image_size)
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)
        self.dim = int(self.model.config.projection_dim)
        self.version = f"{path}@{getattr(self.model.config, '_commit_hash', None) or 'local'}"

    @torch.no_grad()
    def images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = torch.stack([clip_preprocess(Image.fromarray(a), self.size) for a in to_uint8(images)])
        out = []
        for start in range(0, len(pixels), self.batch_size):
            px = pixels[start : start + self.batch_size].to(self.device, self.model.dtype)
            out.append(_normalised(self.model.get_image_features(pixel_values=px)))
        return torch.cat(out)

    @torch.no_grad()
    def texts(self, prompts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(prompts), self.batch_size):
            tok = self.tokenizer(prompts[start : start + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt").to(self.device)
            out.append(_normalised(self.model.get_text_features(**tok)))
        return torch.cat(out)


@functools.lru_cache(maxsize=4)
def _shared(path: str, device: str) -> CLIPEncoder:
    return CLIPEncoder(path, device)


def shared_clip(path: str = "", device: str | torch.device = "cpu") -> CLIPEncoder:
    """One :class:`CLIPEncoder` per (path, device) in this process."""
    return _shared(path or DEFAULT_CLIP, str(torch.device(device)))


def prompts_of(metas: list[dict], who: str) -> list[str]:
    try:
        return [str(m["prompt"]) for m in metas]
    except (KeyError, TypeError):
        raise InputError(f"{who} reward: every metadata row needs a 'prompt'") from None


class CLIPScoreReward:
    """CLIPScore: 100 * max(cos(CLIP image embedding, CLIP prompt embedding), 0) per image."""

    def __init__(self, clip_path: str = "", device: str | torch.device = "cpu"):
        self.clip = shared_clip(clip_path, device)
        self.version = f"clipscore/{self.clip.version}"

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        if len(images) != len(metas):
            raise ValueError(f"clipscore reward: {len(images)} images but {len(metas)} metadata rows")
        cos = (self.clip.images(images) * self.clip.texts(prompts_of(metas, "clipscore"))).sum(-1)
        return (100.0 * cos).clamp(min=0).cpu()
