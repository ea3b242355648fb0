"""The toy EDITING world's model: the image toy's UNet with the source image as extra input channels.

As InstructPix2Pix conditions Stable Diffusion, the source image is concatenated to the noisy image
``x_t`` (channels [x_t (3), source (3), coordinates (2)] into the stem) and the instruction is the text
condition; everything else is :class:`~dgpo.toy.model.FlowUNet`'s. :func:`from_image_base` starts it
from an image toy base with the source channels' stem weights at zero (InstructPix2Pix's init): at step
0 it denoises as the image base does, ignoring the source.

Input and output: [B, 3, S, S] pixels in [-1, 1]; the condition is the text encoder's output plus
``source`` [B, 3, S, S] in [-1, 1]. SD3's flow convention, as the image toy's. The vocabulary is the
image toy's followed by the instruction words, so an image base's word embeddings carry over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dgpo.toy.edit_grammar import render_scene
from dgpo.toy.model import VOCAB, FlowUNet, ToyModelConfig, adopt_image_layers
from dgpo.toy.weights import CheckpointKind

_EDIT_WORDS = ["make", "the", "move", "to", "add", "remove"]
EDIT_VOCAB = [*VOCAB, *[w for w in dict.fromkeys(_EDIT_WORDS) if w not in VOCAB]]


@dataclass
class ToyEditModelConfig(ToyModelConfig):
    """Architecture of the toy editing UNet (saved beside the weights as JSON); the defaults are the
    shipped image base's."""

    channels: tuple[int, int, int] = (16, 32, 64)
    coords: bool = True
    source_channels: int = 3  # the source image's channels, after x_t's


class ToyEditUNet(FlowUNet):
    """Velocity network v(x_t, t, cond) on [B, 3, S, S] pixels in [-1, 1], ``cond["source"]`` the source."""

    vocab = EDIT_VOCAB

    def __init__(self, cfg: ToyEditModelConfig):
        super().__init__()
        self._build_head(cfg)
        self._build_body(cfg, 3 + cfg.source_channels)

    def forward(self, x, t, cond):
        source = cond["source"].to(x.dtype)
        return self._trunk(self._with_coords(torch.cat([x, source], 1)), self._embed(t, cond), cond)


def scene_images(scenes: list[list[dict]]) -> torch.Tensor:
    """Scenes of :mod:`dgpo.toy.edit_grammar` drawn as [n, 3, S, S] in [-1, 1] (the model's pixels)."""
    return torch.from_numpy(np.stack([render_scene(s) for s in scenes])) * 2 - 1


def from_image_base(image_net: torch.nn.Module) -> ToyEditUNet:
    """An editing UNet whose layers and text encoder are an image toy UNet's: the source channels' stem
    weights at zero, the instruction words' embeddings random."""
    icfg = image_net.cfg
    cfg = ToyEditModelConfig(image_size=icfg.image_size, channels=tuple(icfg.channels), text_dim=icfg.text_dim,
                             text_layers=icfg.text_layers, max_tokens=icfg.max_tokens, heads=icfg.heads,
                             pos_embed=icfg.pos_embed, coords=icfg.coords)
    state = dict(image_net.state_dict())
    w = state["stem.weight"]  # [C1, 3 (+ 2 coordinates), 3, 3]
    zeros = w.new_zeros(w.shape[0], cfg.source_channels, *w.shape[2:])
    state["stem.weight"] = torch.cat([w[:, :3], zeros, w[:, 3:]], 1)
    return adopt_image_layers(ToyEditUNet(cfg), image_net, (), state)


BUILTIN_EDIT_BASE = Path(__file__).parent / "edit_base"
EDIT_KIND = CheckpointKind("toy_edit", "toy edit", "edit", ToyEditModelConfig, ToyEditUNet, BUILTIN_EDIT_BASE)


# model.safetensors + config.json ({"kind": "toy_edit", "model": {...}, "info": ...}) / a toy editing checkpoint
# folder (default: the shipped editing base), a missing, malformed or mismatched folder an error naming it
save_edit_toy = EDIT_KIND.save
load_edit_toy = EDIT_KIND.load
