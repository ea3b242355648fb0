"""The GenEval reward on real images: Mask2Former detections + CLIP colours through GenEval's rules.

``GenEvalReward(images [B, 3, H, W] in [0, 1], metas) -> Tensor [B]`` is the partial-credit reward
(``partial``: ``"corrected"`` or the peers' ``"official"``); :meth:`GenEvalReward.verdicts` also gives
the strict 0/1 correctness of the metric and GenEval's reason. Images are scored as the 8-bit PNGs
they would be saved as, with red and blue in their true places (the official evaluator loads PNG
files; the peers' reward servers handed RGB arrays to a BGR pipeline, so their training detector saw
red and blue swapped: that is not reproduced).
"""

from __future__ import annotations

import torch

from dgpo.errors import InputError
from dgpo.rewards.geneval.colors import ColorClassifier
from dgpo.rewards.geneval.detector import GenEvalDetector, to_uint8_values
from dgpo.rewards.geneval.rules import PARTIAL, Verdict, score_image


class GenEvalReward:
    def __init__(self, detector_path: str = "", clip_path: str = "", partial: str = "corrected",
                 device: str | torch.device = "cpu", batch_size: int = 8, threshold: float = 0.3,
                 counting_threshold: float = 0.9):
        if partial not in PARTIAL:
            raise ValueError(f"reward.partial: {partial!r} is not one of {list(PARTIAL)}")
        self.detector = GenEvalDetector(detector_path, device, batch_size)
        self.colors = ColorClassifier(clip_path, device)
        self.partial = partial
        self.thresholds = {"threshold": threshold, "counting_threshold": counting_threshold}

    def verdicts(self, images: torch.Tensor, metas: list[dict]) -> list[Verdict]:
        """GenEval's verdict (strict ``correct``, partial ``reward``, ``reason``) per image."""
        if len(images) != len(metas):
            raise ValueError(f"GenEval reward: {len(images)} images but {len(metas)} metadata rows")
        for m in metas:
            if not isinstance(m.get("include"), list) or not m["include"]:
                raise InputError(f"GenEval reward: prompt {m.get('prompt')!r} has no GenEval metadata "
                                 "('include' clauses); use GenEval-format .jsonl prompts")
        detections = self.detector.detect(images, mask_min_score=min(self.thresholds.values()))
        pixels = to_uint8_values(images).permute(0, 2, 3, 1).byte().cpu().numpy()
        out = []
        for dets, img, meta in zip(detections, pixels, metas):
            color_fn = lambda objs, img=img: self.colors.classify(img, objs)  # noqa: E731
            out.append(score_image(dets, meta, color_fn, self.partial, **self.thresholds))
        return out

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        return torch.tensor([v.reward for v in self.verdicts(images, metas)], dtype=torch.float32)

    def details(self, images: torch.Tensor, metas: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(partial reward [B], strict correctness [B] as 0/1): the trainer's per-step pass@G."""
        v = self.verdicts(images, metas)
        return torch.tensor([x.reward for x in v]), torch.tensor([float(x.correct) for x in v])

    def eval_scores(self, images: torch.Tensor, metas: list[dict]) -> list[tuple[float, float]]:
        """(strict correctness, partial reward) per image, as ``dgpo.evaluation.evaluate`` scores."""
        return [(float(v.correct), v.reward) for v in self.verdicts(images, metas)]
