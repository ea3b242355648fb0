"""``temporal_consistency``: how smoothly a video's frames follow one another, without rewarding a
frozen clip.

    score = consistency - motion_weight * max(0, motion_min - motion)

* ``consistency``: the mean cosine similarity of consecutive frames' CLIP image embeddings (the
  L2-normalised embeddings of :mod:`dgpo.rewards.clip`: the 8-bit frame, OpenAI's preprocessing; weights
  ``reward.clip_path``, one CLIP per process shared with the other CLIP rewards). 1 for identical frames,
  lower as the content changes between frames.
* ``motion``: the mean absolute difference of consecutive 8-bit frames, over pixels and channels, on the
  ``[0, 1]`` scale (1/3 between independent uniform noise frames; 0 for a frozen clip).
* the motion term: a clip that moves less than ``motion_min`` per frame pays ``motion_weight`` per unit
  below it, so that a still image repeated F times (consistency 1) does not beat a moving video. With the
  defaults (``motion_min`` 0.01, about 2.5 grey levels per pixel and frame; ``motion_weight`` 10) a
  frozen clip scores 1 - 0.1 = 0.9: below a moving clip whose consecutive frames keep a cosine above 0.9,
  and any motion of 0.01 or more pays nothing. These are chosen values, not fitted ones: 0.9 is meant to
  sit below the cosine of consecutive frames of real footage (close to 1 for CLIP ViT-L/14 at video frame
  rates) and above that of unrelated images; check them on your model's videos (the ``components``
  method gives the two terms) and set ``reward.temporal_motion_min`` / ``reward.temporal_motion_weight``.

Limits: CLIP embeds all noise-like images alike, so frame-to-frame flicker of fine noise lowers the
consistency little; the motion term only punishes too little motion, not too much.
"""

from __future__ import annotations

import torch

from dgpo.errors import InputError
from dgpo.rewards.clip import shared_clip
from dgpo.rewards.video import check_videos

MOTION_MIN = 0.01
MOTION_WEIGHT = 10.0


class TemporalConsistencyReward:
    """Videos [B, F, 3, H, W] in [0, 1] (F >= 2) -> consistency - motion_weight * max(0, motion_min - motion)."""

    name = "temporal_consistency"
    modality = "video"

    def __init__(self, clip_path: str = "", device: str | torch.device = "cpu", motion_min: float = MOTION_MIN,
                 motion_weight: float = MOTION_WEIGHT):
        if motion_min < 0 or motion_weight < 0:
            raise InputError(f"temporal_consistency: motion_min={motion_min} and motion_weight={motion_weight} "
                             "must be >= 0")
        self.clip, self.motion_min, self.motion_weight = shared_clip(clip_path, device), motion_min, motion_weight
        self.version = f"temporal_consistency[m0={motion_min:g}, w={motion_weight:g}]/{self.clip.version}"

    def components(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(consistency [B], motion [B]) of videos [B, F, 3, H, W]."""
        videos = check_videos(videos, "the temporal_consistency reward")
        b, f = videos.shape[:2]
        if f < 2:
            raise InputError(f"temporal_consistency: the videos have {f} frame; it compares consecutive frames "
                             "(at least 2)")
        emb = self.clip.images(videos.flatten(0, 1)).view(b, f, -1).cpu()
        consistency = (emb[:, 1:] * emb[:, :-1]).sum(-1).mean(1)
        pixels = (videos.detach().float().clamp(0, 1) * 255).round().cpu() / 255  # the 8-bit frames
        motion = (pixels[:, 1:] - pixels[:, :-1]).abs().mean(dim=(1, 2, 3, 4))
        return consistency, motion

    def __call__(self, videos: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        if len(videos) != len(metas):
            raise ValueError(f"temporal_consistency reward: {len(videos)} videos but {len(metas)} metadata rows")
        consistency, motion = self.components(videos)
        return consistency - self.motion_weight * (self.motion_min - motion).clamp(min=0)
