"""Flow-GRPO's OCR reward (visual text rendering): r = max(1 - N_e / N_ref, 0), where N_e is the
edit distance between the recognised text and the text in quotes of the prompt, N_ref its length;
spaces removed, lower-cased, and 0 distance when the target is a substring of what was read.
The official code uses PaddleOCR; here RapidOCR (the PP-OCR models as ONNX, shipped in its wheel),
so the reward works offline with no model download."""

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


class OCRReward:
    def __init__(self):
        require("ocr", "the ocr reward")
        from rapidocr import RapidOCR

        logging.getLogger("RapidOCR").setLevel(logging.ERROR)  # "detection result is empty" on blank images
        self.engine = RapidOCR()

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        arr = (images.clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
        scores = []
        for a, meta in zip(arr, metas):
            out = self.engine(a)
            read = "".join(out.txts or ())
            scores.append(ocr_score(read, target_text(meta["prompt"])))
        return torch.tensor(scores)
