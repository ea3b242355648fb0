"""What a reward scores: images ``[B, 3, H, W]`` or videos ``[B, F, 3, H, W]``, both in ``[0, 1]``.

A reward object declares it with a ``modality`` attribute (``"image"`` when absent), as a
:class:`~dgpo.models.base.FlowModel` does for what it makes. :func:`check_modality` refuses a pair that
does not match, with the fix in the message. Re-exported by :mod:`dgpo.rewards`.
"""

from __future__ import annotations

from typing import Any

from dgpo.errors import InputError, short

MODALITIES = ("image", "video")
SHAPES = {"image": "images [B, 3, H, W]", "video": "videos [B, F, 3, H, W]"}
VIDEO_REWARDS = ("video_ocr", "temporal_consistency", "toy_video", "toy_video_strict")  # built in


def modality_of(obj: Any) -> str:
    """``obj.modality`` (a reward's or a model's), ``"image"`` when it has none; an InputError for
    anything but "image" / "video"."""
    value = getattr(obj, "modality", None) or "image"
    if value not in MODALITIES:
        raise InputError(f"{reward_name(obj)}: modality {short(value)} is not one of {list(MODALITIES)}")
    return value


def reward_name(fn: Any) -> str:
    """A short name of a reward object for messages: its parts (a multi-reward), its ``name``, its
    ``version``, its type."""
    parts = getattr(fn, "parts", None)
    if isinstance(parts, dict):
        return "[" + ", ".join(map(str, parts)) + "]"
    for attr in ("name", "version", "__qualname__"):
        value = getattr(fn, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(fn).__name__


def check_modality(reward: Any, modality: str, where: str) -> None:
    """Raise an :class:`~dgpo.errors.InputError` when ``reward`` scores images and the model makes videos
    (``modality == "video"``), or the other way round. ``where`` names the caller (e.g. "reward.name",
    "dgpo eval"); the message names the reward, what the model makes and the fix."""
    model = modality or "image"
    if model not in MODALITIES:
        raise InputError(f"{where}: the model's modality {short(model)} is not one of {list(MODALITIES)}")
    scores = modality_of(reward)
    if scores == model:
        return
    name = reward_name(reward)
    if scores == "image":
        raise InputError(f"{where}: the reward {name} scores {SHAPES['image']} but the model is a video model "
                         f"(it makes {SHAPES['video']}); score each video's frames with reward.frames=all "
                         "(or first, or every_k with reward.frames_every=K; reward.frames_reduce=mean|min), or "
                         f"use a video reward ({', '.join(VIDEO_REWARDS)})")
    raise InputError(f"{where}: the reward {name} scores {SHAPES['video']} but the model is an image model "
                     f"(it makes {SHAPES['image']}); use an image reward, or a video model (modality 'video'), "
                     "and reward.frames=none")
