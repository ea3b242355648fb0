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

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from dgpo.errors import InputError, MissingPathError, short, user_path
from dgpo.toy.model import VOCAB, Stage, TextEncoder, coord_grid, timestep_embedding
from dgpo.toy.video_grammar import DIRECTIONS, NUMBERS
from dgpo.toy.weights import save_toy

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
    index = {w: i for i, w in enumerate(VIDEO_VOCAB)}
    out = torch.zeros(len(prompts), max_tokens, dtype=torch.long)
    for b, p in enumerate(prompts):
        words = p.lower().split() or ["<null>"]
        ids = [index.get(w, 1) for w in words][:max_tokens]
        out[b, : len(ids)] = torch.tensor(ids)
    return out


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


class ToyVideoUNet(nn.Module):
    """Velocity network v(x_t, t, text) on [B, 3, F, S, S] pixels in [-1, 1]."""

    _no_split_modules = ["Stage"]

    def __init__(self, cfg: ToyVideoModelConfig):
        super().__init__()
        c1, c2, c3 = cfg.channels
        e, td, hd, fr = 4 * c1, cfg.text_dim, cfg.heads, cfg.frames
        n2, n4 = ((cfg.image_size // 2) ** 2, (cfg.image_size // 4) ** 2) if cfg.pos_embed else (0, 0)
        self.cfg = cfg
        self.text_encoder = TextEncoder(cfg)
        self.text_encoder.embed = nn.Embedding(len(VIDEO_VOCAB), td)
        self.t_mlp = nn.Sequential(nn.Linear(c1, e), nn.SiLU(), nn.Linear(e, e))
        self.pool_proj = nn.Linear(td, e)
        self.frame_embed = nn.Parameter(torch.zeros(fr, e))
        self.stem = nn.Conv2d(5 if cfg.coords else 3, c1, 3, padding=1)
        self.down1 = Stage(c1, c1, e, td, hd, False, False)
        self.down2 = Stage(c1, c2, e, td, hd, False, True, n2)
        self.down3 = Stage(c2, c3, e, td, hd, True, True, n4)
        self.mid = Stage(c3, c3, e, td, hd, True, True, n4)
        self.up3 = Stage(2 * c3, c2, e, td, hd, True, True, n4)
        self.up2 = Stage(2 * c2, c1, e, td, hd, False, True, n2)
        self.up1 = Stage(2 * c1, c1, e, td, hd, False, False)
        self.out = nn.Sequential(nn.GroupNorm(8, c1), nn.SiLU(), nn.Conv2d(c1, 3, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
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
        emb = self.t_mlp(timestep_embedding(t, self.cfg.channels[0])) + self.pool_proj(text["pooled"])  # [B, E]
        emb = (emb[:, None] + self.frame_embed[None]).flatten(0, 1)  # [B*F, E]
        text = {k: v.repeat_interleave(f, 0) for k, v in text.items()}
        x = x.transpose(1, 2).reshape(b * f, -1, s, s)  # frames as a batch of images
        if self.cfg.coords:
            x = torch.cat([x, coord_grid(x)], 1)
        x = x.contiguous(memory_format=torch.channels_last)
        tl = self.temporal
        h1 = self.down1(self.stem(x), emb, text)
        h2 = tl["down2"](self.down2(F.avg_pool2d(h1, 2), emb, text))
        h3 = tl["down3"](self.down3(F.avg_pool2d(h2, 2), emb, text))
        h = tl["mid"](self.mid(h3, emb, text))
        h = tl["up3"](self.up3(torch.cat([h, h3], 1), emb, text))
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = tl["up2"](self.up2(torch.cat([h, h2], 1), emb, text))
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up1(torch.cat([h, h1], 1), emb, text)
        return self.out(h).reshape(b, f, 3, s, s).transpose(1, 2)


def from_image_base(image_net: nn.Module, frames: int = 9) -> ToyVideoUNet:
    """A video UNet of ``frames`` frames whose spatial layers and text encoder are an image toy UNet's
    (its word embeddings for the image vocabulary; the video words start random), temporal layers and
    frame embeddings at zero: at initialisation every frame is denoised as the image model denoises an
    image."""
    icfg = image_net.cfg
    cfg = ToyVideoModelConfig(image_size=icfg.image_size, frames=frames, channels=tuple(icfg.channels),
                              text_dim=icfg.text_dim, text_layers=icfg.text_layers, max_tokens=icfg.max_tokens,
                              heads=icfg.heads, coords=icfg.coords, pos_embed=icfg.pos_embed)
    net = ToyVideoUNet(cfg)
    state = dict(image_net.state_dict())
    emb = state.pop("text_encoder.embed.weight")
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(("temporal.", "frame_embed", "text_encoder.embed")) for k in missing), missing
    with torch.no_grad():
        net.text_encoder.embed.weight[: len(VOCAB)] = emb
    return net


BUILTIN_VIDEO_BASE = Path(__file__).parent / "video_base"
_ARCH_KEYS = {f.name for f in fields(ToyVideoModelConfig)}


def save_video_toy(model: ToyVideoUNet, folder: str | Path, info: dict | None = None) -> None:
    """``model.safetensors`` + ``config.json`` (``{"kind": "toy_video", "model": {...}, "info": ...}``)."""
    save_toy(model, folder, info)  # the image toy's writer: weights and {"model": cfg, "info": info}
    path = Path(folder) / "config.json"
    path.write_text(json.dumps({"kind": "toy_video", **json.loads(path.read_text())}, indent=2) + "\n")


def load_video_toy(folder: str | Path | None = None) -> ToyVideoUNet:
    """A toy video checkpoint folder (default: the shipped video base); a missing, malformed or
    mismatched folder is an error naming it."""
    if folder is None and not (BUILTIN_VIDEO_BASE / "model.safetensors").is_file():
        raise MissingPathError("model.kind=toy_video: no toy video base ships yet; pretrain one with "
                               "`dgpo toy pretrain --world video --out DIR` and set model.path=DIR/final")
    folder = user_path(folder or BUILTIN_VIDEO_BASE, "toy video checkpoint")
    cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise MissingPathError(f"toy video checkpoint {folder}: missing {p.name} (a folder that "
                                   "`dgpo toy pretrain --world video` writes)")
    where = f"toy video checkpoint {folder}: bad config.json"
    try:
        raw = json.loads(cfg_path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise InputError(f"{where} ({type(e).__name__}: {short(str(e))})") from None
    arch = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("kind") != "toy_video" or not isinstance(arch, dict):
        raise InputError(f"{where}: not a toy video checkpoint (needs \"kind\": \"toy_video\" and a 'model' "
                         "object; an image toy checkpoint is model.kind=toy)")
    unknown = sorted(set(arch) - _ARCH_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key model.{short(unknown[0])}; allowed: {sorted(_ARCH_KEYS)}")
    try:
        cfg = ToyVideoModelConfig(**{**arch, "channels": tuple(arch.get("channels", ToyVideoModelConfig.channels))})
        model = ToyVideoUNet(cfg)
        model.load_state_dict(load_file(str(w_path)))
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, SafetensorError, OSError) as e:
        raise InputError(f"toy video checkpoint {folder}: weights do not match config.json "
                         f"({type(e).__name__}: {short(str(e))})") from None
    return model.eval()
