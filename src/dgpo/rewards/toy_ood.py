"""The toy world's out-of-domain rewards: image statistics the training reward does not see, logged beside
it at every eval (``eval.extra_rewards``) so that a run which games its reward shows it.

* ``toy_off_palette``: 1 minus the share of *off-palette* pixels, those farther than 0.25 (the largest
  channel difference) from black and from every toy colour (artifacts, smears, washed-out colours);
  higher is better, 1 for a clean render.
* ``toy_sharpness``: the mean absolute Laplacian of the grey image (4 x centre minus its 4 neighbours,
  interior pixels); blur lowers it.

Both take images ``[B, 3, H, W]`` in ``[0, 1]`` (modality "image"), return one score per image, ignore
the prompt, and run in numpy on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from dgpo.toy.render import PALETTE

OFF_PALETTE_DISTANCE = 0.25  # a pixel farther than this (max over channels) from every colour is off-palette
COLOURS = np.array([(0.0, 0.0, 0.0), *PALETTE.values()])  # [K, 3]: the background, then the toy colours


def _array(images) -> np.ndarray:
    """Images [B, 3, H, W] as a float numpy array (a tensor on any device, or an array)."""
    if isinstance(images, torch.Tensor):
        return images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def off_palette_share(images) -> np.ndarray:
    """[B]: the share of each image's pixels that are off-palette (see the module)."""
    x = _array(images).transpose(0, 2, 3, 1)[..., None, :]  # [B, H, W, 1, 3]
    dist = np.abs(x - COLOURS).max(-1).min(-1)  # [B, H, W]: to the nearest colour
    return (dist > OFF_PALETTE_DISTANCE).mean((1, 2))


def laplacian_sharpness(images) -> np.ndarray:
    """[B]: the mean |Laplacian| of each image's grey (channel-mean) image over its interior pixels."""
    g = _array(images).mean(1)
    lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    return np.abs(lap).mean((1, 2))


def toy_off_palette(images: torch.Tensor, metas: list[dict] | None = None) -> torch.Tensor:
    """[B] 1 - the off-palette share: higher is better."""
    return torch.from_numpy(1.0 - off_palette_share(images)).float()


def toy_sharpness(images: torch.Tensor, metas: list[dict] | None = None) -> torch.Tensor:
    """[B] the mean |Laplacian| of the grey image: higher is sharper."""
    return torch.from_numpy(laplacian_sharpness(images)).float()
