"""Rewards: callables (images [B, 3, H, W] in [0, 1], metadata rows) -> Tensor [B].

A reward is a built-in name, a user's ``"package.module:function"`` or a Python callable
(:mod:`dgpo.rewards.custom` has the contract every reward follows). A video reward (``modality =
"video"``: ``video_ocr``, ``temporal_consistency``, an image reward on frames,
:class:`~dgpo.rewards.video.FrameReward`) takes videos [B, F, 3, H, W] instead; :func:`check_modality`
refuses a reward that does not score what the model makes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from dgpo.errors import InputError
from dgpo.rewards.modality import check_modality, modality_of

__all__ = ["RewardFn", "build_named_reward", "build_reward", "build_reward_from_config", "check_modality",
           "modality_of"]

if TYPE_CHECKING:
    from dgpo.config import RewardConfig

RewardFn = Callable[[torch.Tensor, list[dict]], torch.Tensor]


def build_reward(name: str | RewardFn, model_path: str = "", processor_path: str = "", device="cpu", *,
                 clip_path: str = "", partial: str = "corrected", aesthetic_path: str = "",
                 hps_path: str = "", imagereward_path: str = "", remote: dict | None = None,
                 judge: dict | None = None, clipscore_divisor: float = 30.0,
                 paper_units: bool = False, motion_min: float = 0.01, motion_weight: float = 10.0,
                 key: str = "reward.name") -> RewardFn:
    """The one name -> reward map, at the config boundary. ``remote`` / ``judge``: RemoteReward's /
    JudgeReward's keyword arguments. ``paper_units``: scores as paper tables report them, not as the
    official training rewards scale them (PickScore raw, not / 26; CLIPScore 100 max(cos, 0), not
    logits / 30; JPEG compressibility -kB, not -kB / 500; UnifiedReward 1-5, not / 5).
    ``motion_min`` / ``motion_weight``: temporal_consistency's motion term (:mod:`dgpo.rewards.temporal`).
    ``name`` may also be a user's ``"package.module:function"`` (imported; errors name ``key``) or a
    Python callable, either wrapped by :func:`dgpo.rewards.custom.as_reward`."""
    from dgpo.rewards.custom import as_reward, is_custom_name, load_reward

    if callable(name):
        return as_reward(name)
    if is_custom_name(name):
        return load_reward(name, device, key)
    from dgpo.rewards.image import JpegCompressibility, colorfulness
    from dgpo.rewards.toy import ToyGenEvalReward
    from dgpo.rewards.toy_edit import ToyEditReward
    from dgpo.rewards.toy_ood import toy_off_palette, toy_sharpness
    from dgpo.rewards.toy_video import ToyVideoReward

    table = {
        "toy_geneval": lambda: ToyGenEvalReward(strict=False),
        "toy_geneval_strict": lambda: ToyGenEvalReward(strict=True),
        "toy_video": lambda: ToyVideoReward(strict=False),
        "toy_video_strict": lambda: ToyVideoReward(strict=True),
        "toy_edit": lambda: ToyEditReward(strict=False),
        "toy_edit_strict": lambda: ToyEditReward(strict=True),
        "toy_off_palette": lambda: toy_off_palette,
        "toy_sharpness": lambda: toy_sharpness,
        "jpeg_compressibility": lambda: JpegCompressibility(-1.0 if paper_units else -1.0 / 500),
        "jpeg_incompressibility": lambda: JpegCompressibility(1.0),
        "colorfulness": lambda: colorfulness,
        "ocr": _ocr,
        "video_ocr": _video_ocr,
        "temporal_consistency": lambda: _temporal(clip_path, device, motion_min, motion_weight),
        "pickscore": lambda: _pickscore(model_path, processor_path, device, paper_units),
        "geneval": lambda: _geneval(model_path, clip_path, partial, device),
        "aesthetic": lambda: _aesthetic(aesthetic_path, clip_path, device),
        "clipscore": lambda: _clipscore(clip_path, device, paper_units, clipscore_divisor),
        "hpsv2": lambda: _hpsv2(hps_path, device),
        "imagereward": lambda: _imagereward(imagereward_path, device),
        "unifiedreward": lambda: _judge({**(judge or {}), "divisor": 1.0 if paper_units else 5.0}),
        "image_similarity": lambda: _image_similarity(clip_path, device),
        "unifiedreward_edit": lambda: _edit_judge({**(judge or {}), "divisor": 1.0 if paper_units else 25.0}),
        "remote": lambda: _remote(remote or {}),
    }
    if name not in table:
        raise InputError(f"unknown reward {name!r}; allowed: {sorted(table)}, or your own "
                         "'package.module:function'")
    return table[name]()


def build_reward_from_config(rc: RewardConfig, device="cpu", reward: RewardFn | None = None) -> RewardFn:
    """``reward.*`` -> one reward, or a :class:`~dgpo.rewards.multi.MultiReward` for a list / weights.
    ``reward``: the user's own reward object instead of ``reward.name`` (a callable with the contract of
    :mod:`dgpo.rewards.custom`, wrapped by its ``as_reward``; a ``MultiReward`` is used as it is).
    With ``reward.frames`` other than ``none``, every image reward (of the list, or the user's own) is
    scored on the frames of videos (:class:`~dgpo.rewards.video.FrameReward`); video rewards stay as
    they are."""
    from dgpo.rewards.multi import MultiReward

    frames = rc.frames

    def on_frames(fn):
        if frames == "none" or modality_of(fn) != "image":
            return fn
        from dgpo.rewards.video import FrameReward

        return FrameReward(fn, frames, rc.frames_every, rc.frames_reduce)

    if reward is not None:
        from dgpo.rewards.custom import as_reward

        fn = as_reward(reward)
        return fn if isinstance(fn, MultiReward) else on_frames(fn)

    names = rc.names()
    weights = list(rc.weights) or [1.0] * len(names)
    keys = ["reward.name"] if isinstance(rc.name, str) else [f"reward.name[{i}]" for i in range(len(names))]
    fns = {n: on_frames(build_named_reward(rc, n, device, k)) for n, k in zip(names, keys)}
    if isinstance(rc.name, str) and weights == [1.0]:
        return fns[rc.name]
    return MultiReward(fns, dict(zip(names, weights)))


def build_named_reward(rc: RewardConfig, name: str, device="cpu", key: str = "reward.name") -> RewardFn:
    """One reward by name with the weights, paths and servers of ``reward.*`` (a training reward, or an
    out-of-domain one of ``eval.extra_rewards``); errors name ``key``."""
    import os

    remote = {"url": rc.url, "token": os.environ.get(rc.token_env, ""), "timeout_s": rc.timeout_s,
              "retries": rc.retries, "backoff_s": rc.backoff_s, "max_backoff_s": rc.max_backoff_s}
    named = {"model": rc.judge_model} if rc.judge_model else {}  # '': each judge's own served name
    judge = {**remote, "url": rc.judge_url, **named, "concurrency": rc.judge_concurrency,
             "token": os.environ.get(rc.judge_token_env, "") if rc.judge_token_env else ""}
    paths = {"clip_path": rc.clip_path, "partial": rc.partial, "aesthetic_path": rc.aesthetic_path,
             "hps_path": rc.hps_path, "imagereward_path": rc.imagereward_path, "remote": remote,
             "judge": judge, "clipscore_divisor": rc.clipscore_divisor,
             "motion_min": rc.temporal_motion_min, "motion_weight": rc.temporal_motion_weight}
    return build_reward(name, rc.model_path, rc.processor_path, device, **paths, key=key)


def _ocr() -> RewardFn:
    from dgpo.rewards.ocr import OCRReward

    return OCRReward()


def _video_ocr() -> RewardFn:
    from dgpo.rewards.ocr import VideoOCRReward

    return VideoOCRReward()


def _temporal(clip_path: str, device, motion_min: float, motion_weight: float) -> RewardFn:
    from dgpo.rewards.temporal import TemporalConsistencyReward

    return TemporalConsistencyReward(clip_path, device, motion_min, motion_weight)


def _pickscore(model_path: str, processor_path: str, device, paper_units: bool) -> RewardFn:
    from dgpo.rewards.pickscore import OFFICIAL_DIVISOR, PickScoreReward

    return PickScoreReward(model_path, processor_path, device, 1.0 if paper_units else OFFICIAL_DIVISOR)


def _geneval(model_path: str, clip_path: str, partial: str, device) -> RewardFn:
    from dgpo.rewards.geneval.reward import GenEvalReward

    return GenEvalReward(model_path, clip_path, partial, device)


def _aesthetic(weights_path: str, clip_path: str, device) -> RewardFn:
    from dgpo.rewards.aesthetic import AestheticReward

    return AestheticReward(weights_path, clip_path, device)


def _clipscore(clip_path: str, device, paper_units: bool, divisor: float) -> RewardFn:
    from dgpo.rewards.clip import CLIPScoreReward

    return CLIPScoreReward(clip_path, device, paper_units, divisor)


def _hpsv2(hps_path: str, device) -> RewardFn:
    from dgpo.rewards.hps import HPSv2Reward

    return HPSv2Reward(hps_path, device)


def _imagereward(path: str, device) -> RewardFn:
    from dgpo.rewards.imagereward import ImageRewardReward

    return ImageRewardReward(path, device)


def _judge(kwargs: dict) -> RewardFn:
    from dgpo.rewards.judge import JudgeReward

    if not kwargs.get("url"):
        raise InputError("reward.judge_url: the unifiedreward judge needs its OpenAI-compatible server's base URL "
                         "(e.g. http://127.0.0.1:17140/v1 for sglang serving UnifiedReward-7b-v1.5)")
    return JudgeReward(**kwargs)


def _image_similarity(clip_path: str, device) -> RewardFn:
    from dgpo.rewards.edit import ImageSimilarityReward

    return ImageSimilarityReward(clip_path, device)


def _edit_judge(kwargs: dict) -> RewardFn:
    from dgpo.rewards.edit import EditJudgeReward

    if not kwargs.get("url"):
        raise InputError("reward.judge_url: the unifiedreward_edit judge needs its OpenAI-compatible server's base URL "
                         "(e.g. http://localhost:8080/v1 for vLLM serving UnifiedReward-Edit as 'UnifiedReward')")
    return EditJudgeReward(**kwargs)


def _remote(kwargs: dict) -> RewardFn:
    from dgpo.rewards.remote import RemoteReward

    if not kwargs.get("url"):
        raise InputError("reward.url: the remote reward needs the server's URL (e.g. http://127.0.0.1:8765)")
    return RemoteReward(**kwargs)
