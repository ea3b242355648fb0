"""Editing rewards: each row's source images come with its metadata (``source_images``, from an edit prompt
file: :mod:`dgpo.data.edits`); the result is compared with the row's first source image.

``image_similarity`` (Flow-GRPO's ``image_similarity_score``, ``flow_grpo/clip_scorer.py``): the cosine of the
L2-normalised CLIP image embeddings (``get_image_features``) of the result and of its source, the source
resized to the result's size first (PIL's bicubic, as the official training resizes it before the pipeline)
and read as 8-bit, both through the official scorer's transform (torchvision's Resize + CenterCrop +
Normalize on float tensors). Default CLIP: openai/clip-vit-large-patch14 (``reward.clip_path``), shared with
the other CLIP rewards. Flow-GRPO's counting-edit reward is the weighted sum of GenEval's and this one
(``reward.name: [geneval, image_similarity]``; Kontext 0.5 / 0.5, Qwen-Image-Edit 0.8 / 0.2).

``unifiedreward_edit``: a VLM edit judge behind an OpenAI-compatible chat server (the ``unifiedreward``
judge's client, :mod:`dgpo.rewards.judge`), asked UnifiedReward-Edit's pointwise instruction-following
question (CodeGoat24/UnifiedReward, ``UnifiedReward-Edit/edit_pointwise_instruction_following.py``), the
source then the result as JPEG (quality 95) data URIs before the text, as its ``vllm_request.py`` sends them.
The judge answers ``"score" : [success, overediting]``, each 0 to 25; the reward is their minimum (VIEScore's
semantic-consistency score for editing, whose 0-10 question UnifiedReward-Edit rescales to 0-25) divided by
25. An answer without such a list scores 0 and is counted (``unparsed``), as the ``unifiedreward`` judge does.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re

import numpy as np
import torch

from dgpo.data.edits import load_source, open_source
from dgpo.errors import InputError
from dgpo.rewards.clip import _normalised, shared_clip, tensor_preprocess
from dgpo.rewards.judge import JudgeReward
from dgpo.rewards.remote import RemoteRewardError

log = logging.getLogger(__name__)

EDIT_JUDGE_MODEL = "UnifiedReward"  # the served name in UnifiedReward-Edit's vllm_server.sh
EDIT_SCALE = 25.0
EDIT_QUESTION = (
    "You are a professional digital artist. You will have to evaluate the effectiveness of the AI-generated "
    "image(s) based on given rules.\nAll the input images are AI-generated. All human in the images are "
    "AI-generated too. so you need not worry about the privacy confidentials.\n\nIMPORTANT: You will have to give "
    "your output in this way (Keep your reasoning concise and short.):\n{{\n\n\"reasoning\" : \"...\",\n\"score\" : "
    "[...],\n}}\n\nRULES:\n\nTwo images will be provided: The first being the original AI-generated image and the "
    "second being an edited version of the first.\nThe objective is to evaluate how successfully the editing "
    "instruction has been executed in the second image.\n\nNote that sometimes the two images might look "
    "identical due to the failure of image edit.\n\n\nFrom scale 0 to 25: \nA score from 0 to 25 will be given "
    "based on the success of the editing. (0 indicates that the scene in the edited image does not follow the "
    "editing instruction at all. 25 indicates that the scene in the edited image follow the editing instruction "
    "text perfectly.)\nA second score from 0 to 25 will rate the degree of overediting in the second image. (0 "
    "indicates that the scene in the edited image is completely different from the original. 25 indicates that "
    "the edited image can be recognized as a minimal edited yet effective version of original.)\nPut the score in "
    "a list such that output score = [score1, score2], where 'score1' evaluates the editing success and 'score2' "
    "evaluates the degree of overediting.\n\nEditing instruction:{instruction}\n")
_NUMBER = r"(-?\d+(?:\.\d+)?)"
SCORES = re.compile(r"[\"']?score[\"']?\s*:\s*\[\s*" + _NUMBER + r"\s*,\s*" + _NUMBER + r"\s*\]", re.IGNORECASE)


def sources_of(metas: list[dict], who: str) -> list[str]:
    """Each row's first source image path; a row without one is an error naming the reward."""
    try:
        return [str(m["source_images"][0]) for m in metas]
    except (KeyError, IndexError, TypeError):
        raise InputError(f"{who} reward: every row needs its source image (an edit prompt file: JSON lines with "
                         "'prompt' and 'source')") from None


class ImageSimilarityReward:
    """CLIP image-embedding cosine of each result and its source (Flow-GRPO's ``image_similarity``)."""

    def __init__(self, clip_path: str = "", device: str | torch.device = "cpu"):
        self.clip = shared_clip(clip_path, device)
        self.version = f"image_similarity/{self.clip.version}"

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        if len(images) != len(metas):
            raise ValueError(f"image_similarity reward: {len(images)} images but {len(metas)} metadata rows")
        paths = sources_of(metas, "image_similarity")
        h, w = images.shape[-2:]
        refs = torch.stack([_resized(p, w, h) for p in paths])
        return (self.embed(images) * self.embed(refs)).sum(-1).cpu()

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings [B, D] of float images [B, 3, H, W] in [0, 1]."""
        c, out = self.clip, []
        for a in range(0, len(images), c.batch_size):
            px = tensor_preprocess(images[a : a + c.batch_size].float().cpu(), c.size).to(c.device, c.model.dtype)
            out.append(_normalised(c.model.get_image_features(pixel_values=px)))
        return torch.cat(out)


def _resized(path: str, w: int, h: int) -> torch.Tensor:
    """A source image at w x h (PIL's bicubic), as 8-bit values / 255 [3, h, w]."""
    from PIL import Image

    img = open_source(path)
    if img.size == (w, h):
        return load_source(path)
    arr = np.asarray(img.resize((w, h), Image.BICUBIC), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def jpeg_data_uri(image) -> str:
    """A PIL image or a [3, H, W] tensor in [0, 1] as ``data:image/jpeg;base64,...`` (quality 95)."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        u8 = (image.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        image = Image.fromarray(u8)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=95)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_edit_scores(answer: str) -> tuple[float, float] | None:
    """The judge's ``"score" : [success, overediting]``, or None when the answer has no such list."""
    m = SCORES.search(answer)
    return (float(m.group(1)), float(m.group(2))) if m else None


class EditJudgeReward(JudgeReward):
    who = "unifiedreward_edit judge"

    def __init__(self, url: str, model: str = EDIT_JUDGE_MODEL, divisor: float = EDIT_SCALE, **kwargs):
        """``divisor``: 25 for the training reward in [0, 1]; 1 for the judge's own 0-25 scale."""
        super().__init__(url, model, divisor=divisor, **kwargs)
        self.version = f"unifiedreward_edit judge {model} at {self.url}"

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        if len(images) != len(metas):
            raise ValueError(f"unifiedreward_edit: {len(images)} images but {len(metas)} metadata rows")
        if not len(images):
            return torch.zeros(0)
        sources = sources_of(metas, "unifiedreward_edit")
        pairs = [(jpeg_data_uri(open_source(s)), jpeg_data_uri(im)) for s, im in zip(sources, images)]
        answers = self._ask_all([str(m.get("prompt", "")) for m in metas], pairs)
        scores = [parse_edit_scores(a) for a in answers]
        missed = [a for a, s in zip(answers, scores) if s is None]
        if missed:
            self.unparsed += len(missed)
            log.warning("unifiedreward_edit: %d of %d answers have no 'score': [a, b] and score 0; e.g. %r",
                        len(missed), len(answers), missed[0][:200])
        # the question's scale is 0-25: an answer outside it is clamped, not passed on
        return torch.tensor([0.0 if s is None else min(25.0, max(0.0, min(s))) / self.divisor for s in scores],
                            dtype=torch.float32)

    def ask(self, prompt: str, images: tuple[str, str]) -> str:
        """One chat completion: the source and the result, then the question about ``prompt``."""
        content = [*({"type": "image_url", "image_url": {"url": u}} for u in images),
                   {"type": "text", "text": EDIT_QUESTION.format(instruction=prompt)}]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0,
                "max_tokens": 4096}
        out = self._request("POST", "/chat/completions", json.dumps(body).encode())
        try:
            return str(out["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise RemoteRewardError(f"{self.who} {self.url}: not a chat completion: {str(out)[:200]}") from None
