"""CLIP (transformers) image and text embeddings shared by the CLIP-based rewards, and CLIPScore.

Images are scored as the 8-bit images they would be saved as, preprocessed as OpenAI's and open_clip's
ViT-L/14 transform (PIL bicubic resize of the shortest side, centre crop, OpenAI mean/std: the
transform the LAION aesthetic MLP was trained behind). Embeddings are L2-normalised. One model per
(path, device) is loaded per process, so ``aesthetic`` and ``clipscore`` in one multi-reward share it.

CLIPScore, two scales. The training reward is the official DGPO / Flow-GRPO scorer's
(``flow_grpo/clip_scorer.py``): CLIP's logits / 30 (100 cos / 30, negative allowed) on the float image,
resized as torchvision's tensor ``Resize`` (bilinear, antialiased), centre-cropped and normalised
(DiffusionNFT's copy of that scorer divides by 100: ``reward.clipscore_divisor``).
Paper units (``dgpo eval --protocol``): ``100 * max(cos(image, prompt), 0)`` on the 8-bit image,
torchmetrics' scale (Hessel et al. 2021 use 2.5 instead of 100). Prompts longer than CLIP's 77 tokens
are truncated. Default weights: ``openai/clip-vit-large-patch14`` (OpenAI's licence, MIT).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from dgpo.errors import InputError

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's CLIP normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images [B, 3, H, W] in [0, 1] -> the uint8 [B, H, W, 3] a PNG of them holds."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def clip_preprocess(img: Image.Image, size: int = 224) -> torch.Tensor:
    """open_clip's eval transform (torchvision Resize(size, BICUBIC) + CenterCrop(size) on a PIL image,
    then mean/std): shortest side -> ``size`` (longest: int(size * long / short)), crop offsets
    int(round(excess / 2))."""
    w, h = img.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    arr = np.asarray(img.convert("RGB").crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


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


def hub_file(repo: str, filename: str, key: str) -> str:
    """A weights file from the hub (huggingface_hub's cache) when the config key ``key`` is empty; any
    failure (offline, no such file) is one clear error naming the key."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename)
    except Exception as e:  # noqa: BLE001 - offline, no such file...: one clear message
        raise InputError(f"{key} is empty and {repo}/{filename} cannot be fetched ({e}); "
                         f"download it and set {key}") from None


def tensor_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's Resize(size) + CenterCrop(size) + Normalize on float image tensors [B, 3, H, W]
    in [0, 1] (the official clip scorer's transform): bilinear, antialiased, shortest side -> ``size``
    (longest: int(size * long / short)), crop offsets int(round(excess / 2))."""
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    x = images.float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    x = x[..., top : top + size, left : left + size]
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class CLIPScoreReward:
    """CLIPScore per image: the official training reward (logits / ``divisor``: 30 in DGPO's and
    Flow-GRPO's scorer, 100 in DiffusionNFT's) or, with ``paper_units``, torchmetrics' 100 * max(cos, 0)."""

    def __init__(self, clip_path: str = "", device: str | torch.device = "cpu", paper_units: bool = False,
                 divisor: float = 30.0):
        self.clip, self.paper_units, self.divisor = shared_clip(clip_path, device), paper_units, divisor
        self.version = f"clipscore{'-paper' if paper_units else ''}/{self.clip.version}"

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        if len(images) != len(metas):
            raise ValueError(f"clipscore reward: {len(images)} images but {len(metas)} metadata rows")
        prompts = prompts_of(metas, "clipscore")
        if self.paper_units:
            cos = (self.clip.images(images) * self.clip.texts(prompts)).sum(-1)
            return (100.0 * cos).clamp(min=0).cpu()
        return self._official(images, prompts)

    @torch.no_grad()
    def _official(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        c, out = self.clip, []
        for a in range(0, len(prompts), c.batch_size):
            px = tensor_preprocess(images[a : a + c.batch_size].cpu(), c.size).to(c.device, c.model.dtype)
            # official: padding="max_length"; CLIP pools the EOS token under a causal mask, so the
            # padding after it changes nothing
            tok = c.tokenizer(prompts[a : a + c.batch_size], padding=True, truncation=True,
                              max_length=c.max_tokens, return_tensors="pt").to(c.device)
            o = c.model(pixel_values=px, **tok)  # logits_per_image's diagonal, row by row (batch-independent)
            cos = (o.image_embeds * o.text_embeds).sum(-1)
            out.append((c.model.logit_scale.exp() * cos).float() / self.divisor)
        return torch.cat(out).cpu()
