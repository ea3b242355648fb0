"""GenEval's colour classifier: zero-shot CLIP ViT-L/14 over 10 colours.

One object: the image pasted through the object's binary mask onto uniform grey #999, cropped to its
box, preprocessed as open_clip's ViT-L-14 transform (shortest side to 224 with PIL bicubic, centre
crop, OpenAI mean/std); its L2-normalised image embedding is compared with one text embedding per
colour (three templates, each normalised, averaged, renormalised); the colour is the argmax.

Default weights: ``openai/clip-vit-large-patch14`` (the weights open_clip loads as ViT-L-14 "openai";
OpenAI's CLIP licence, MIT).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from dgpo.rewards.clip import clip_preprocess, shared_clip

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
BACKGROUND = (153, 153, 153)  # "#999"


def object_crop(image: np.ndarray, mask: np.ndarray | None, box: Sequence[float]) -> Image.Image:
    """The object of ``image`` (uint8 [H, W, 3]) through its bool ``mask`` on grey, cropped to ``box``."""
    pixels = image if mask is None else np.where(mask[..., None], image, np.array(BACKGROUND, np.uint8))
    x0, y0, x1, y1 = (int(round(float(v))) for v in box[:4])  # PIL's crop rounds float boxes
    if x1 <= x0 or y1 <= y0:  # an empty box (an empty mask): the whole composite, not a 0-pixel crop
        x0, y0, x1, y1 = 0, 0, image.shape[1], image.shape[0]
    return Image.fromarray(np.ascontiguousarray(pixels)).crop((x0, y0, x1, y1))


def _features(out) -> torch.Tensor:
    """transformers 5 returns an output object (projected ``pooler_output``), 4.x a tensor."""
    f = getattr(out, "pooler_output", out)
    return f / f.norm(dim=-1, keepdim=True)


class ColorClassifier:
    """``classify(image, detections)`` -> one of :data:`COLORS` per detection (its ``cls``, ``mask``, ``box``)."""

    def __init__(self, path: str = "", device: str | torch.device = "cpu", batch_size: int = 16):
        clip = shared_clip(path, device)  # one CLIP per (path, device), shared with aesthetic / clipscore
        self.tokenizer, self.model, self.device, self.size = clip.tokenizer, clip.model, clip.device, clip.size
        self.batch_size = batch_size
        self._text: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_weights(self, cls: str) -> torch.Tensor:
        """[D, 10] zero-shot weights for objects of class ``cls`` (cached per class)."""
        if cls not in self._text:
            prompts = [t.format(c=c, cls=cls) for c in COLORS for t in TEMPLATES]
            tok = self.tokenizer(prompts, padding=True, return_tensors="pt").to(self.device)
            emb = _features(self.model.get_text_features(**tok)).float().view(len(COLORS), len(TEMPLATES), -1)
            mean = emb.mean(1)
            self._text[cls] = (mean / mean.norm(dim=-1, keepdim=True)).T
        return self._text[cls]

    @torch.no_grad()
    def classify(self, image: np.ndarray, detections: Sequence) -> list[str]:
        """Colours of ``detections`` in ``image`` (uint8 [H, W, 3]), each zero-shot against its own class."""
        if not detections:
            return []
        crops = torch.stack([clip_preprocess(object_crop(image, d.mask, d.box), self.size) for d in detections])
        feats = []
        for start in range(0, len(crops), self.batch_size):
            px = crops[start : start + self.batch_size].to(self.device, self.model.dtype)
            feats.append(_features(self.model.get_image_features(pixel_values=px)).float())
        img = torch.cat(feats)
        logits = torch.stack([100.0 * img[i] @ self.text_weights(d.cls) for i, d in enumerate(detections)])
        return [COLORS[i] for i in logits.argmax(-1).tolist()]
