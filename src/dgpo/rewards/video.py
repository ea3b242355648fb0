"""Image rewards on the frames of videos: :class:`FrameReward`.

A video is a float tensor ``[B, F, 3, H, W]`` in ``[0, 1]``. ``FrameReward(image_reward, frames, every,
reduce)`` is a video reward (``modality = "video"``): it takes the selected frames of every video
(``all``; ``first``; ``every_k``: frames 0, k, 2k, ...), scores them as one batch of images ``[B * K, 3,
H, W]`` in one call of the image reward (each frame with its video's metadata row), and reduces the K
scores of each video to one (``mean``, or ``min``: the worst frame). Where the image reward has
``details`` / ``eval_scores``, so does the wrapper: a video is strictly correct when all its selected
frames are; extra numbers per frame are reduced like the scores.

In a config: ``reward.frames: all | first | every_k`` (``none``, the default: rewards are used as they
are), ``reward.frames_every`` (k), ``reward.frames_reduce``;
:func:`dgpo.rewards.build_reward_from_config` wraps every image reward of ``reward.name`` with it.
"""

from __future__ import annotations

from typing import Any

import torch

from dgpo.errors import InputError
from dgpo.rewards.modality import modality_of, reward_name

FRAMES = ("all", "first", "every_k")
REDUCE = ("mean", "min")


def check_videos(videos: Any, who: str) -> torch.Tensor:
    """``videos`` as a 5-D tensor [B, F, 3, H, W], or an InputError naming ``who``."""
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or videos.shape[2] != 3:
        shape = list(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise InputError(f"{who} scores videos [B, F, 3, H, W] in [0, 1]; got {shape} (images [B, 3, H, W] "
                         "need an image reward)")
    if videos.shape[1] < 1:
        raise InputError(f"{who}: the videos have no frames")
    return videos


def frame_indices(n_frames: int, frames: str, every: int = 1) -> list[int]:
    """The frames scored of a video of ``n_frames``: all, the first, or 0, every, 2 every, ..."""
    if frames == "all":
        return list(range(n_frames))
    if frames == "first":
        return [0]
    if frames == "every_k":
        return list(range(0, n_frames, every))
    raise InputError(f"frames={frames!r} is not one of {list(FRAMES)}")


def _reduce(values: torch.Tensor, how: str) -> torch.Tensor:
    """[B, K] -> [B] by the mean or the minimum over the K frames."""
    return values.mean(1) if how == "mean" else values.min(1).values


class FrameReward:
    """An image reward applied to the frames of each video, reduced per video (see the module)."""

    modality = "video"

    def __init__(self, image_reward: Any, frames: str = "all", every: int = 1, reduce: str = "mean"):
        if frames not in FRAMES:
            raise InputError(f"reward.frames: {frames!r} is not one of {list(FRAMES)}")
        if reduce not in REDUCE:
            raise InputError(f"reward.frames_reduce: {reduce!r} is not one of {list(REDUCE)}")
        if frames == "every_k" and (not isinstance(every, int) or every < 1):
            raise InputError(f"reward.frames_every: {every!r}; frames=every_k needs an integer k >= 1")
        if modality_of(image_reward) != "image":
            raise InputError(f"reward.frames: {reward_name(image_reward)} already scores videos; only an image "
                             "reward is applied to frames")
        self.inner, self.frames, self.every, self.reduce = image_reward, frames, every, reduce
        self.name = f"{reward_name(image_reward)} on frames"
        which = f"every {every}" if frames == "every_k" else frames
        self.version = f"frames[{which}, {reduce}]({getattr(image_reward, 'version', reward_name(image_reward))})"
        if callable(getattr(image_reward, "details", None)):
            self.details = self._details
        if callable(getattr(image_reward, "eval_scores", None)):
            self.eval_scores = self._eval_scores

    def _frames(self, videos: torch.Tensor, metas: list[dict]) -> tuple[torch.Tensor, list[dict], int]:
        videos = check_videos(videos, f"reward {self.name!r}")
        if len(videos) != len(metas):
            raise ValueError(f"reward {self.name!r}: {len(videos)} videos but {len(metas)} metadata rows")
        idx = frame_indices(videos.shape[1], self.frames, self.every)
        picked = videos[:, idx].flatten(0, 1)  # [B * K, 3, H, W], video-major
        return picked, [m for m in metas for _ in idx], len(idx)

    def _per_video(self, values: Any, n: int, k: int, what: str) -> torch.Tensor:
        t = torch.as_tensor(values).detach().float().cpu().reshape(-1)
        if len(t) != n * k:
            raise ValueError(f"reward {self.name!r}: the image reward returned {len(t)} {what} for {n * k} frames")
        return t.view(n, k)

    def __call__(self, videos: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        picked, rows, k = self._frames(videos, metas)
        return _reduce(self._per_video(self.inner(picked, rows), len(metas), k, "scores"), self.reduce)

    def _details(self, videos: torch.Tensor, metas: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        picked, rows, k = self._frames(videos, metas)
        scores, correct = self.inner.details(picked, rows)
        n = len(metas)
        return (_reduce(self._per_video(scores, n, k, "scores"), self.reduce),
                self._per_video(correct, n, k, "correctness flags").min(1).values)  # all frames correct

    def _eval_scores(self, videos: torch.Tensor, metas: list[dict]) -> list[tuple]:
        picked, rows, k = self._frames(videos, metas)
        scored = list(self.inner.eval_scores(picked, rows))
        n = len(metas)
        if len(scored) != n * k:
            raise ValueError(f"reward {self.name!r}: the image reward's eval_scores gave {len(scored)} rows "
                             f"for {n * k} frames")
        correct = self._per_video([float(s[0]) for s in scored], n, k, "values")
        flags = bool(((correct == 0) | (correct == 1)).all())
        correct = correct.min(1).values if flags else _reduce(correct, self.reduce)  # flags: all frames correct
        score = _reduce(self._per_video([float(s[1]) for s in scored], n, k, "values"), self.reduce)
        out = []
        for i in range(n):
            group = scored[i * k : (i + 1) * k]
            extras = [s[2] for s in group if len(s) > 2 and isinstance(s[2], dict)]
            row: tuple = (float(correct[i]), float(score[i]))
            if extras:
                keys = [key for key in extras[0] if all(isinstance(e.get(key), (int, float)) for e in extras)]
                row += ({key: float(_reduce(torch.tensor([[float(e[key]) for e in extras]]), self.reduce))
                         for key in keys},)
            out.append(row)
        return out

    def __repr__(self) -> str:
        return f"FrameReward({reward_name(self.inner)!r}, frames={self.frames!r}, every={self.every}, " \
               f"reduce={self.reduce!r})"
