"""The toy world's text-conditioned rectified-flow model: a small conv UNet with cross-attention.

Convention (SD3's): x_t = (1 - t) x0 + t eps, velocity target eps - x0, t in [0, 1] with 1 = noise.
The text encoder is a word-level embedding plus a 2-layer transformer, trained jointly; the empty
prompt "" is the unconditional branch for classifier-free guidance (prompt dropout in pretraining).
Attention projections are plain ``nn.Linear`` named ``to_q/to_k/to_v/to_out`` so that peft's LoRA
targets them as it targets diffusers' attention.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgpo.toy.grammar import COLORS, NUMBERS, RELATIONS, SHAPES

_WORDS = ["a", "photo", "of", "and", *SHAPES, *[s + "s" for s in SHAPES], "crosses", *COLORS]
# a list, never a set: a set of strings iterates in a per-process (hash-seeded) order, which gave each
# process its own token ids for the relation words
_WORDS += [*NUMBERS.values(), *[w for r in RELATIONS for w in r.split()]]
VOCAB = ["<pad>", "<unk>", "<null>", *dict.fromkeys(_WORDS)]


@dataclass
class ToyModelConfig:
    """Architecture of the toy UNet (saved beside the weights as JSON)."""

    image_size: int = 32
    channels: tuple[int, int, int] = (32, 64, 128)
    text_dim: int = 64
    text_layers: int = 2
    max_tokens: int = 16
    heads: int = 4
    # learned 2D position embeddings on the attention tokens (zero-initialised), so that attention can
    # tell left from right; off in the shipped base, which uses ``coords`` (docs/notes/toy-demo-tuning.md)
    pos_embed: bool = False
    # two coordinate channels (x, y in [-1, 1]) appended to the input pixels (CoordConv), so that every
    # layer can tell where it is: "left of" is representable from the first step (on in the shipped base)
    coords: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def tokenize(prompts: list[str], max_tokens: int, vocab: list[str] = VOCAB) -> torch.Tensor:
    """Word-level ids [B, max_tokens] in ``vocab`` (a world's vocabulary extends :data:`VOCAB`); "" becomes
    the single <null> token."""
    index = {w: i for i, w in enumerate(vocab)}
    out = torch.zeros(len(prompts), max_tokens, dtype=torch.long)
    for b, p in enumerate(prompts):
        words = p.lower().split() or ["<null>"]
        ids = [index.get(w, 1) for w in words][:max_tokens]
        out[b, : len(ids)] = torch.tensor(ids)
    return out


class TextEncoder(nn.Module):
    def __init__(self, cfg: ToyModelConfig):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), cfg.text_dim)
        self.pos = nn.Parameter(torch.randn(cfg.max_tokens, cfg.text_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.text_dim, cfg.heads, 2 * cfg.text_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_dim)

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        pad = ids == 0
        h = self.norm(self.encoder(self.embed(ids) + self.pos, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).float()
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1)
        return {"tokens": h, "mask": ~pad, "pooled": pooled}


class Attention(nn.Module):
    """Multi-head attention of image tokens over a context (itself or text tokens)."""

    def __init__(self, dim: int, ctx_dim: int, heads: int, tokens: int = 0):
        super().__init__()
        self.heads = heads
        self.pos = nn.Parameter(torch.zeros(tokens, dim)) if tokens else None
        self.norm = nn.GroupNorm(8, dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(ctx_dim, dim)
        self.to_v = nn.Linear(ctx_dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, ctx=None, mask=None):
        b, c, h, w = x.shape
        q_in = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        if self.pos is not None:
            q_in = q_in + self.pos
        kv = q_in if ctx is None else ctx
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        q, k, v = split(self.to_q(q_in)), split(self.to_k(kv)), split(self.to_v(kv))
        attn_mask = None if mask is None else mask[:, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        o = self.to_out(o.transpose(1, 2).flatten(2))
        return x + o.transpose(1, 2).reshape(b, c, h, w)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, 1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class Stage(nn.Module):
    """A ResBlock, then optional self-attention and cross-attention to the prompt."""

    def __init__(self, cin, cout, emb_dim, text_dim, heads, self_attn, cross_attn, tokens=0):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim)
        self.attn = Attention(cout, cout, heads, tokens) if self_attn else None
        self.cross = Attention(cout, text_dim, heads, tokens) if cross_attn else None

    def forward(self, x, emb, text):
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None:
            x = self.cross(x, text["tokens"], text["mask"])
        return x


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


def coord_grid(x: torch.Tensor) -> torch.Tensor:
    """[B, 2, H, W] pixel-centre coordinates (x, y) in [-1, 1], in ``x``'s dtype and device."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), 0).expand(b, 2, h, w)


class FlowUNet(nn.Module):
    """The conv UNet every toy world shares: a text encoder, the time + prompt embedding, a stem, three
    down stages, a middle one and three up stages with skips, and a zero-initialised output. A world's
    network builds it with :meth:`_build_head` / :meth:`_build_body` (its own layers may go between) and
    runs :meth:`_trunk`, which takes per-stage layers (``mix``) applied after the named stages."""

    _no_split_modules = ["Stage"]  # FSDP's units under accelerate's TRANSFORMER_BASED_WRAP (as in diffusers)
    vocab: list[str] = VOCAB  # the words its text encoder knows (:func:`tokenize`)

    def _build_head(self, cfg) -> None:
        """The text encoder, the time MLP and the pooled-prompt projection; a larger vocabulary (a world's
        own words after :data:`VOCAB`) gets its own embedding, drawn after the image one's."""
        c1 = cfg.channels[0]
        self.cfg = cfg
        self.text_encoder = TextEncoder(cfg)
        if len(self.vocab) != len(VOCAB):
            self.text_encoder.embed = nn.Embedding(len(self.vocab), cfg.text_dim)
        self.t_mlp = nn.Sequential(nn.Linear(c1, 4 * c1), nn.SiLU(), nn.Linear(4 * c1, 4 * c1))
        self.pool_proj = nn.Linear(cfg.text_dim, 4 * c1)

    def _build_body(self, cfg, in_channels: int = 3) -> None:
        """The stem (``in_channels`` pixels, plus two coordinate channels with ``cfg.coords``), the seven
        stages and the output convolution (zero: the network starts at velocity 0)."""
        c1, c2, c3 = cfg.channels
        e, td, hd = 4 * c1, cfg.text_dim, cfg.heads
        n2, n4 = ((cfg.image_size // 2) ** 2, (cfg.image_size // 4) ** 2) if cfg.pos_embed else (0, 0)
        self.stem = nn.Conv2d(in_channels + (2 if cfg.coords else 0), c1, 3, padding=1)
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

    def _embed(self, t: torch.Tensor, text: dict) -> torch.Tensor:
        """[B, 4 C1]: the timestep's sinusoidal embedding through the MLP plus the pooled prompt."""
        return self.t_mlp(timestep_embedding(t, self.cfg.channels[0])) + self.pool_proj(text["pooled"])

    def _with_coords(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, coord_grid(x)], 1) if self.cfg.coords else x

    def _trunk(self, x: torch.Tensor, emb: torch.Tensor, text: dict, mix=None) -> torch.Tensor:
        """The UNet on the stem's input [N, C_in, S, S]; ``mix[name]``, where given, follows stage ``name``."""
        after = (lambda name, h: mix[name](h) if name in mix else h) if mix is not None else (lambda name, h: h)
        h1 = self.down1(self.stem(x), emb, text)  # S
        h2 = after("down2", self.down2(F.avg_pool2d(h1, 2), emb, text))  # S/2
        h3 = after("down3", self.down3(F.avg_pool2d(h2, 2), emb, text))  # S/4
        h = after("mid", self.mid(h3, emb, text))
        h = after("up3", self.up3(torch.cat([h, h3], 1), emb, text))
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = after("up2", self.up2(torch.cat([h, h2], 1), emb, text))
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up1(torch.cat([h, h1], 1), emb, text)
        return self.out(h)


class ToyUNet(FlowUNet):
    """Velocity network v(x_t, t, text) on [B, 3, S, S] pixels in [-1, 1]."""

    def __init__(self, cfg: ToyModelConfig):
        super().__init__()
        self._build_head(cfg)
        self._build_body(cfg)

    def forward(self, x, t, text):
        return self._trunk(self._with_coords(x), self._embed(t, text), text)


def adopt_image_layers(net: FlowUNet, image_net: nn.Module, new: tuple[str, ...],
                       state: dict | None = None) -> FlowUNet:
    """Load an image toy UNet's layers into a world's ``net`` that shares them: ``state`` (default: the
    image net's weights) loads by name, the parameters starting with ``new`` keep their initialisation,
    and the word embeddings of :data:`VOCAB` are copied into ``net``'s larger vocabulary."""
    state = dict(image_net.state_dict() if state is None else state)
    emb = state.pop("text_encoder.embed.weight")
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith((*new, "text_encoder.embed")) for k in missing), missing
    with torch.no_grad():
        net.text_encoder.embed.weight[: len(VOCAB)] = emb
    return net
