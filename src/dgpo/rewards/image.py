"""Prompt-free image rewards: JPEG (in)compressibility (encoded size at quality 95) and colourfulness."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def jpeg_kilobytes(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """[B] JPEG size (kB) of images [B, 3, H, W] in [0, 1]."""
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes)


class JpegCompressibility:
    """``scale`` x the JPEG size in kB. The official rewards (Flow-GRPO's and DGPO's ``rewards.py``):
    compressibility -kB / 500 (smaller files score higher), incompressibility +kB; DDPO's and paper
    tables' compressibility: -kB."""

    def __init__(self, scale: float = -1.0 / 500):
        self.scale = scale

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        return self.scale * jpeg_kilobytes(images)


def colorfulness(images: torch.Tensor, metas: list[dict] | None = None) -> torch.Tensor:
    """Hasler & Suesstrunk's colourfulness (2003) of images [B, 3, H, W] in [0, 1], on the 0-255 scale:
    sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2), rg = R - G, yb = (R + G) / 2 - B.
    A smooth (continuous in the pixels) prompt-free reward, unlike JPEG sizes, which jump by whole bytes."""
    x = images.clamp(0, 1).double() * 255
    r, g, b = x[:, 0].flatten(1), x[:, 1].flatten(1), x[:, 2].flatten(1)
    rg, yb = r - g, (r + g) / 2 - b
    std = (rg.var(1, unbiased=False) + yb.var(1, unbiased=False)).sqrt()
    mean = (rg.mean(1) ** 2 + yb.mean(1) ** 2).sqrt()
    return (std + 0.3 * mean).float()
