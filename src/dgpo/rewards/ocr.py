"""Flow-GRPO's OCR reward (visual text rendering): r = max(1 - N_e / N_ref, 0), where N_e is the
edit distance between the recognised text and the text in quotes of the prompt, N_ref its length;
spaces removed, lower-cased, and 0 distance when the target is a substring of what was read.
The official code uses PaddleOCR; here RapidOCR (the PP-OCR models as ONNX, shipped in its wheel),
so the reward works offline with no model download.

``video_ocr`` (:class:`VideoOCRReward`) is Flow-GRPO's video OCR reward (``video_ocr_score`` /
``OcrScorer_video_or_image`` in ``flow_grpo/ocr.py``, trained on Wan2.1 with the ``dataset/ocr``
prompts): it reads frames 0, 4, 8, ... of each video (``frame_interval = 4``); each frame scores
``1 - min(edit distance, N_ref) / N_ref`` (spaces removed, lower-cased, and -- unlike the image reward --
no shortcut when the target is a substring of what was read); the video's reward is the mean over the
frames that score above 0, or 0 when none does."""

from __future__ import annotations

import logging
import re

import numpy as np
import torch

from dgpo.errors import InputError
from dgpo.extras import require

QUOTED = re.compile(r'"([^"]+)"')


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def target_text(prompt: str) -> str:
    m = QUOTED.search(prompt)
    if m is None:
        raise InputError(f"OCR reward: prompt {prompt!r} has no text in double quotes to render")
    return m.group(1)


def ocr_score(read: str, target: str) -> float:
    read, target = read.replace(" ", "").lower(), target.replace(" ", "").lower()
    if not target:
        return 0.0
    dist = 0 if target in read else levenshtein(read, target)
    return max(1.0 - min(dist, len(target)) / len(target), 0.0)


VIDEO_FRAME_INTERVAL = 4  # Flow-GRPO's OcrScorer_video_or_image.frame_interval


def video_ocr_score(reads: list[str], target: str) -> float:
    """Flow-GRPO's video OCR reward from what was read on each sampled frame: the mean of the frames'
    ``1 - min(edit distance, N_ref) / N_ref`` over the frames that score above 0 (0 when none does)."""
    target = target.replace(" ", "").lower()
    if not target:
        return 0.0
    scores = [1.0 - min(levenshtein(r.replace(" ", "").lower(), target), len(target)) / len(target) for r in reads]
    kept = [s for s in scores if s > 0]
    return sum(kept) / len(kept) if kept else 0.0


class OCRReward:
    name = "ocr"

    def __init__(self):
        require("ocr", "the ocr reward")
        from rapidocr import RapidOCR

        logging.getLogger("RapidOCR").setLevel(logging.ERROR)  # "detection result is empty" on blank images
        self.engine = RapidOCR()
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)  # RapidOCR() sets its own level again

    def read(self, image: np.ndarray) -> str:
        """The text RapidOCR reads on one uint8 [H, W, 3] image, its lines joined."""
        return "".join(self.engine(image).txts or ())

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        arr = (images.clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
        scores = []
        for a, meta in zip(arr, metas):
            scores.append(ocr_score(self.read(a), target_text(meta["prompt"])))
        return torch.tensor(scores)


class VideoOCRReward(OCRReward):
    """Flow-GRPO's ``video_ocr``: videos [B, F, 3, H, W] in [0, 1]; frames 0, 4, 8, ... read by RapidOCR
    (:func:`video_ocr_score`)."""

    name = "video_ocr"
    modality = "video"
    version = f"video_ocr[rapidocr, every {VIDEO_FRAME_INTERVAL} frames]"

    def __init__(self, frame_interval: int = VIDEO_FRAME_INTERVAL):
        super().__init__()
        self.frame_interval = frame_interval

    def __call__(self, videos: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        from dgpo.rewards.video import check_videos

        videos = check_videos(videos, "the video_ocr reward")
        if len(videos) != len(metas):
            raise ValueError(f"video_ocr reward: {len(videos)} videos but {len(metas)} metadata rows")
        targets = [target_text(m["prompt"]) for m in metas]  # a prompt without quotes fails before any OCR
        frames = videos[:, :: self.frame_interval].clamp(0, 1).permute(0, 1, 3, 4, 2).float().cpu()
        arr = (frames.numpy() * 255).round().astype(np.uint8)  # [B, K, H, W, 3]
        return torch.tensor([video_ocr_score([self.read(f) for f in clip], t) for clip, t in zip(arr, targets)])
