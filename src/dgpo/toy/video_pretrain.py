"""`dgpo toy pretrain --world video`: train the toy video base on rendered clips.

The shared loop of :mod:`dgpo.toy.pretrain_loop` on clips [B, 3, F, 32, 32]: rectified-flow matching
in SD3's convention with logit-normal t (one t per clip), prompt dropout for classifier-free guidance,
an EMA of the weights (what ships; it warms up, as the temporal layers start at zero), snapshots every
``save_every`` steps, and the same resumable state (``resume`` goes on bit for bit).
Captions come from :func:`dgpo.toy.video_grammar.pretrain_pool`, which never names a held-out binding.

``init``: ``"image"`` (default) starts the spatial layers and the text encoder from the shipped image
base (:func:`dgpo.toy.video_model.from_image_base`: at step 0 every frame is denoised as the image
base denoises an image; temporal layers and the frame embedding start at zero); ``"scratch"`` a
random network of ``cfg``; a folder: a toy video checkpoint (continued) or an image toy checkpoint
(its spatial layers, as ``"image"``).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from dgpo.toy import video_grammar
from dgpo.toy.grammar import by_category
from dgpo.toy.pretrain_loop import LoopOptions, World, parse_weights, run, start_model
from dgpo.toy.video_model import (
    ToyVideoModelConfig,
    ToyVideoUNet,
    from_image_base,
    load_video_toy,
    save_video_toy,
)
from dgpo.toy.video_render import render_clip


def parse_video_weights(text: str) -> dict[str, float]:
    """``--weights`` for the video world ("motion_single=2,still=1") as a dict."""
    return parse_weights(text, video_grammar.CATEGORIES)


def initial_video_model(init: str | Path | None, cfg: ToyVideoModelConfig | None) -> ToyVideoUNet:
    """The network pretraining starts from (see the module docstring for ``init``)."""
    cfg = cfg or ToyVideoModelConfig()  # an image base gives the rest of the architecture but the frames
    return start_model(init, lambda: ToyVideoUNet(cfg), "toy_video", lambda img: from_image_base(img, cfg.frames),
                       load_video_toy)


def make_video_batch(rng: random.Random, by_cat: dict, n: int, p_drop: float, frames: int,
                     weights: dict | None = None) -> tuple[torch.Tensor, list[str]]:
    """``n`` rendered clips [n, 3, F, H, W] in [-1, 1] and their captions ("" with probability ``p_drop``)."""
    metas = [video_grammar.sample_pretrain(rng, [], by_cat, weights) for _ in range(n)]
    clips = np.stack([render_clip(m, rng, frames) for m in metas])  # [n, F, 3, H, W]
    x0 = torch.from_numpy(clips).transpose(1, 2) * 2 - 1
    prompts = ["" if rng.random() < p_drop else m["prompt"] for m in metas]
    return x0.contiguous(), prompts


def pretrain_video(out_dir: str | Path, cfg: ToyVideoModelConfig | None = None, init: str | Path | None = "image",
                   weights: dict | None = None, **options) -> Path:
    """Train until ``minutes`` of wall time (this call's) or ``max_steps`` (in all) pass; returns the
    final snapshot (``out_dir/final``; ``out_dir/step_N`` every ``save_every`` steps). ``options``: the
    loop's settings (:class:`~dgpo.toy.pretrain_loop.LoopOptions`; ``batch_size`` 16 clips by default);
    ``resume``: continue the run in ``out_dir`` from its last saved state exactly where it stopped."""
    by_cat = by_category(video_grammar.pretrain_pool())

    def batch(rng: random.Random, net: ToyVideoUNet, n: int, p_drop: float):
        return (*make_video_batch(rng, by_cat, n, p_drop, net.cfg.frames, weights), {})

    world = World("video", batch, save_video_toy, recipe={"world": "video"})
    o = LoopOptions(**{"batch_size": 16, **options})
    return run(world, out_dir, lambda: initial_video_model(init, cfg), o, init, weights)
