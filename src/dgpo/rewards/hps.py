"""HPSv2.1 (Wu et al. 2023, tgxs002/HPSv2; Apache-2.0): open_clip ViT-H-14 fine-tuned on human
preferences; the score is the cosine of the normalised image and prompt embeddings (about 0.2-0.35).

An optional extra: ``pip install 'dgpo[hps]'`` (open-clip-torch, which needs a torchvision that
matches your torch: install that first). The checkpoint ``HPS_v2.1_compressed.pt`` comes from
``reward.hps_path`` or, when that is empty, from the hub repo ``xswu/HPSv2`` (huggingface_hub's
cache); it is read with ``weights_only=True``.

Preprocessing is HPSv2's own evaluation transform, done in torch on the batch: the 8-bit image as a
tensor, bicubic resize of the shortest side to 224 with antialiasing (torchvision's tensor ``Resize``),
centre crop (offsets ``int(round(excess / 2))``), OpenAI mean/std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dgpo.errors import InputError
from dgpo.extras import require
from dgpo.rewards.clip import CLIP_MEAN, CLIP_STD, hub_file, prompts_of

HPS_REPO, HPS_FILE, HPS_ARCH = "xswu/HPSv2", "HPS_v2.1_compressed.pt", "ViT-H-14"


def hps_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, 3, size, size]: 8-bit values, shortest side to ``size`` (bicubic,
    antialiased; longest ``int(size * long / short)``), centre crop, OpenAI mean/std."""
    x = (images.float().clamp(0, 1) * 255).round() / 255
    h, w = x.shape[-2:]
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    x = x[..., top : top + size, left : left + size]
    mean, std = torch.tensor(CLIP_MEAN, device=x.device), torch.tensor(CLIP_STD, device=x.device)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


class HPSv2Reward:
    def __init__(self, checkpoint: str = "", device: str | torch.device = "cpu", batch_size: int = 16):
        require("hps", "the hpsv2 reward")
        import open_clip

        path = checkpoint or hub_file(HPS_REPO, HPS_FILE, "reward.hps_path")
        self.model = open_clip.create_model(HPS_ARCH, pretrained=None, precision="fp32", device="cpu")
        try:
            open_clip.load_checkpoint(self.model, path, strict=True, weights_only=True)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise InputError(f"reward.hps_path: cannot load {path} into open_clip {HPS_ARCH}: {e}") from None
        self.model = self.model.eval().requires_grad_(False).to(device)
        self.tokenizer = open_clip.get_tokenizer(HPS_ARCH)
        self.device, self.batch_size = torch.device(device), batch_size
        self.version = f"hpsv2.1 {path} open_clip {open_clip.__version__}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        if len(images) != len(metas):
            raise ValueError(f"hpsv2 reward: {len(images)} images but {len(metas)} metadata rows")
        prompts, out = prompts_of(metas, "hpsv2"), []
        for a in range(0, len(images), self.batch_size):
            px = hps_preprocess(images[a : a + self.batch_size].to(self.device))
            tokens = self.tokenizer(prompts[a : a + self.batch_size]).to(self.device)
            img = F.normalize(self.model.encode_image(px), dim=-1)
            txt = F.normalize(self.model.encode_text(tokens), dim=-1)
            out.append((img * txt).sum(-1).float().cpu())
        return torch.cat(out)
