"""The toy video world's model: the image toy's UNet applied to every frame, with temporal layers.

Factorised space-time: the spatial layers are exactly :class:`~dgpo.toy.model.ToyUNet`'s (the same
module names, so the shipped image base initialises them: :func:`from_image_base`), run on the
``B * F`` frames as a batch of images; after its stages at 16x16 and 8x8, temporal layers mix each
pixel's features across frames: a convolution over frames (kernel 3) at 16x16, attention over the F
frames at 8x8 (``to_q/to_k/to_v/to_out``, so LoRA adapts them as it adapts the spatial attention).
Every temporal layer is a residual branch whose output projection starts at zero: at initialisation
the network computes, frame by frame, what the image UNet computes. A learned embedding of the frame
index joins the timestep and prompt embedding of each frame (so each frame knows where in the clip it
is, which motion needs).

Input and output: [B, 3, F, H, W] pixels in [-1, 1] (channels first, as video latents are), SD3's
flow convention as the image toy's. The vocabulary is the image toy's followed by the video words, so
an image base's word embeddings carry over.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgpo.toy.model import VOCAB, FlowUNet, adopt_image_layers, tokenize
from dgpo.toy.video_grammar import DIRECTIONS, NUMBERS
from dgpo.toy.weights import CheckpointKind

_VIDEO_WORDS = ["video", "moving", "standing", *DIRECTIONS, "apart", "towards", "each", "other",
                *NUMBERS.values()]
VIDEO_VOCAB = [*VOCAB, *[w for w in dict.fromkeys(_VIDEO_WORDS) if w not in VOCAB]]


@dataclass
class ToyVideoModelConfig:
    """Architecture of the toy video UNet (saved beside the weights as JSON)."""

    image_size: int = 32
    frames: int = 9
    channels: tuple[int, int, int] = (16, 32, 64)
    text_dim: int = 64
    text_layers: int = 2
    max_tokens: int = 16
    heads: int = 4
    coords: bool = True
    pos_embed: bool = False  # the image UNet's spatial position embeddings (off, as in the image base)

    def to_dict(self) -> dict:
        return asdict(self)


def tokenize_video(prompts: list[str], max_tokens: int) -> torch.Tensor:
    """Word-level ids [B, max_tokens] in :data:`VIDEO_VOCAB`; "" becomes the single <null> token."""
    return tokenize(prompts, max_tokens, VIDEO_VOCAB)


def _frames_last(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B*F, C, H, W] -> [B, F, H*W, C] (a view when ``x`` is channels-last)."""
    bf, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(bf // frames, frames, h * w, c)


def _frames_first(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, F, H*W, C] -> [B*F, C, H, W] shaped as ``like`` (channels-last strides)."""
    bf, c, h, w = like.shape
    return y.reshape(bf, h, w, c).permute(0, 3, 1, 2)


class TemporalConv(nn.Module):
    """x + a convolution over frames (kernel 3, zero padding) of silu(norm(x)), per pixel; on
    [B*F, C, H, W] with F frames, as one linear map of each pixel's (previous, own, next) features."""

    def __init__(self, dim: int, frames: int):
        super().__init__()
        self.frames = frames
        self.norm = nn.GroupNorm(8, dim)
        self.mix = nn.Linear(3 * dim, dim)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, x):
        y = _frames_last(F.silu(self.norm(x)), self.frames)  # [B, F, HW, C]
        pad = F.pad(y, (0, 0, 0, 0, 1, 1))
        y = self.mix(torch.cat([pad[:, :-2], y, pad[:, 2:]], -1))
        return x + _frames_first(y, x)


class TemporalAttention(nn.Module):
    """x + attention over the F frames of each pixel (learned frame positions); [B*F, C, H, W]."""

    def __init__(self, dim: int, frames: int, heads: int):
        super().__init__()
        self.frames, self.heads = frames, heads
        self.norm = nn.GroupNorm(8, dim)
        self.pos = nn.Parameter(torch.randn(frames, dim) * 0.02)
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x):
        f = self.frames
        y = _frames_last(self.norm(x), f)  # [B, F, HW, C]
        b, _, hw, c = y.shape
        t = y.transpose(1, 2).reshape(b * hw, f, c) + self.pos  # [B*HW, F, C]
        split = lambda z: z.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        o = F.scaled_dot_product_attention(split(self.to_q(t)), split(self.to_k(t)), split(self.to_v(t)))
        o = self.to_out(o.transpose(1, 2).flatten(2))  # [B*HW, F, C]
        return x + _frames_first(o.view(b, hw, f, c).transpose(1, 2), x)


class ToyVideoUNet(FlowUNet):
    """Velocity network v(x_t, t, text) on [B, 3, F, S, S] pixels in [-1, 1]."""

    vocab = VIDEO_VOCAB

    def __init__(self, cfg: ToyVideoModelConfig):
        super().__init__()
        c1, c2, c3 = cfg.channels
        fr, hd = cfg.frames, cfg.heads
        self._build_head(cfg)
        self.frame_embed = nn.Parameter(torch.zeros(fr, 4 * c1))
        self._build_body(cfg)
        # none at full resolution: per-pixel layers on 32x32 cost a third more time than at 16x16 and 8x8
        # together, and a 1-2 px step per frame is already visible at 16x16
        self.temporal = nn.ModuleDict({
            "down2": TemporalConv(c2, fr), "down3": TemporalAttention(c3, fr, hd),
            "mid": TemporalAttention(c3, fr, hd), "up3": TemporalAttention(c2, fr, hd), "up2": TemporalConv(c1, fr),
        })

    def forward(self, x, t, text):
        b, _, f, s, _ = x.shape
        if f != self.cfg.frames:
            raise ValueError(f"the toy video model makes clips of {self.cfg.frames} frames, got {f}")
        emb = self._embed(t, text)  # [B, E]
        emb = (emb[:, None] + self.frame_embed[None]).flatten(0, 1)  # [B*F, E]
        text = {k: v.repeat_interleave(f, 0) for k, v in text.items()}
        x = x.transpose(1, 2).reshape(b * f, -1, s, s)  # frames as a batch of images
        x = self._with_coords(x).contiguous(memory_format=torch.channels_last)
        return self._trunk(x, emb, text, self.temporal).reshape(b, f, 3, s, s).transpose(1, 2)


def from_image_base(image_net: nn.Module, frames: int = 9) -> ToyVideoUNet:
    """A video UNet of ``frames`` frames whose spatial layers and text encoder are an image toy UNet's
    (its word embeddings for the image vocabulary; the video words start random), temporal layers and
    frame embeddings at zero: at initialisation every frame is denoised as the image model denoises an
    image."""
    icfg = image_net.cfg
    cfg = ToyVideoModelConfig(image_size=icfg.image_size, frames=frames, channels=tuple(icfg.channels),
                              text_dim=icfg.text_dim, text_layers=icfg.text_layers, max_tokens=icfg.max_tokens,
                              heads=icfg.heads, coords=icfg.coords, pos_embed=icfg.pos_embed)
    return adopt_image_layers(ToyVideoUNet(cfg), image_net, ("temporal.", "frame_embed"))


BUILTIN_VIDEO_BASE = Path(__file__).parent / "video_base"
VIDEO_KIND = CheckpointKind("toy_video", "toy video", "video", ToyVideoModelConfig, ToyVideoUNet, BUILTIN_VIDEO_BASE)


# model.safetensors + config.json ({"kind": "toy_video", "model": {...}, "info": ...}) / a toy video checkpoint
# folder (default: the shipped video base), a missing, malformed or mismatched folder an error naming it
save_video_toy = VIDEO_KIND.save
load_video_toy = VIDEO_KIND.load
