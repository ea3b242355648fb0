"""Prompt-free image rewards from DDPO: JPEG (in)compressibility, the encoded size in kilobytes."""

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
    """DDPO's compressibility reward: minus the JPEG size in kB (smaller files score higher)."""

    def __init__(self, sign: float = -1.0):
        self.sign = sign

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        return self.sign * jpeg_kilobytes(images)
