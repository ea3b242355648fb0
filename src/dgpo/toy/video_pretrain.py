"""`dgpo toy pretrain --world video`: train the toy video base on rendered clips.

The image pretraining's recipe (:mod:`dgpo.toy.pretrain`) on clips [B, 3, F, 32, 32]: rectified-flow
matching in SD3's convention with logit-normal t (one t per clip), prompt dropout for classifier-free
guidance, an EMA of the weights (what ships), snapshots every ``save_every`` steps, and the same
resumable state (weights, EMA, AdamW moments, both random generators; ``resume`` goes on bit for bit).
Captions come from :func:`dgpo.toy.video_grammar.pretrain_pool`, which never names a held-out binding.

``init``: ``"image"`` (default) starts the spatial layers and the text encoder from the shipped image
base (:func:`dgpo.toy.video_model.from_image_base`: at step 0 every frame is denoised as the image
base denoises an image; temporal layers and the frame embedding start at zero); ``"scratch"`` a
random network of ``cfg``; a folder: a toy video checkpoint (continued) or an image toy checkpoint
(its spatial layers, as ``"image"``).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dgpo.errors import InputError
from dgpo.schedules import interpolate
from dgpo.toy import video_grammar
from dgpo.toy.grammar import by_category
from dgpo.toy.pretrain import _begin, _ema_update, _save_state
from dgpo.toy.video_model import (
    ToyVideoModelConfig,
    ToyVideoUNet,
    from_image_base,
    load_video_toy,
    save_video_toy,
    tokenize_video,
)
from dgpo.toy.video_render import render_clip

log = logging.getLogger(__name__)


def parse_video_weights(text: str) -> dict[str, float]:
    """``--weights`` for the video world ("motion_single=2,still=1") as a dict."""
    weights = {}
    for item in filter(None, text.split(",")):
        cat, _, w = item.partition("=")
        try:
            value = float(w)
        except ValueError:
            value = -1.0
        if cat not in video_grammar.CATEGORIES or not (value >= 0 and value < float("inf")):
            raise InputError(f"--weights: {item!r} must be CATEGORY=WEIGHT with CATEGORY in "
                             f"{list(video_grammar.CATEGORIES)} and a weight >= 0")
        weights[cat] = value
    return weights


def initial_video_model(init: str | Path | None, cfg: ToyVideoModelConfig | None) -> ToyVideoUNet:
    """The network pretraining starts from (see the module docstring for ``init``)."""
    if init in (None, "scratch"):
        return ToyVideoUNet(cfg or ToyVideoModelConfig())
    from dgpo.toy.weights import BUILTIN_BASE, load_toy

    frames = (cfg or ToyVideoModelConfig()).frames  # an image base gives the rest of the architecture
    if init == "image":
        return from_image_base(load_toy(BUILTIN_BASE), frames).train()
    folder = Path(init)
    try:
        kind = json.loads((folder / "config.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind == "toy_video":
        return load_video_toy(folder).train()
    return from_image_base(load_toy(folder), frames).train()


def make_video_batch(rng: random.Random, by_cat: dict, n: int, p_drop: float, frames: int,
                     weights: dict | None = None) -> tuple[torch.Tensor, list[str]]:
    """``n`` rendered clips [n, 3, F, H, W] in [-1, 1] and their captions ("" with probability ``p_drop``)."""
    metas = [video_grammar.sample_pretrain(rng, [], by_cat, weights) for _ in range(n)]
    clips = np.stack([render_clip(m, rng, frames) for m in metas])  # [n, F, 3, H, W]
    x0 = torch.from_numpy(clips).transpose(1, 2) * 2 - 1
    prompts = ["" if rng.random() < p_drop else m["prompt"] for m in metas]
    return x0.contiguous(), prompts


def video_flow_matching_loss(model: ToyVideoUNet, x0: torch.Tensor, prompts: list[str], gen: torch.Generator,
                             t_mean: float = 0.0) -> torch.Tensor:
    """Mean ||v_theta(x_t, t) - (eps - x0)||^2 over clips, one logit-normal t per clip."""
    b = x0.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=gen) + t_mean)
    eps = torch.randn(x0.shape, generator=gen)
    x_t = interpolate(x0, eps, t)
    text = model.text_encoder(tokenize_video(prompts, model.cfg.max_tokens))
    return (model(x_t, t, text) - (eps - x0)).pow(2).mean()


def _train_step(model, opt, rng, gen, by_cat, step, lr, batch_size, p_drop, weights, t_mean) -> float:
    for g in opt.param_groups:
        g["lr"] = lr * min(1.0, (step + 1) / 200)
    x0, prompts = make_video_batch(rng, by_cat, batch_size, p_drop, model.cfg.frames, weights)
    loss = video_flow_matching_loss(model, x0, prompts, gen, t_mean)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def pretrain_video(
    out_dir: str | Path,
    minutes: float = 60.0,
    batch_size: int = 16,
    lr: float = 5e-4,
    ema_decay: float = 0.999,
    p_drop: float = 0.1,
    save_every: int = 250,
    seed: int = 0,
    cfg: ToyVideoModelConfig | None = None,
    max_steps: int | None = None,
    init: str | Path | None = "image",
    weights: dict | None = None,
    t_mean: float = 0.0,
    resume: bool = False,
) -> Path:
    """Train until ``minutes`` of wall time (this call's) or ``max_steps`` (in all) pass; returns the
    final snapshot (``out_dir/final``; ``out_dir/step_N`` every ``save_every`` steps). ``resume``:
    continue the run in ``out_dir`` from its last saved state exactly where it stopped."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    model = initial_video_model(init, cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    recipe = {"world": "video", "model": model.cfg.to_dict(), "batch_size": batch_size, "lr": lr,
              "ema_decay": ema_decay, "p_drop": p_drop, "seed": seed, "init": None if init is None else str(init),
              "weights": weights or None, "t_mean": t_mean}
    recipe = json.loads(json.dumps(recipe))  # as state.json holds it (tuples become lists)
    step, minutes_before = _begin(out, resume, model, ema, opt, rng, gen, recipe)
    by_cat = by_category(video_grammar.pretrain_pool())
    t_start, last = time.time(), out / "final"
    elapsed = lambda: minutes_before + (time.time() - t_start) / 60
    bar = tqdm(desc="pretrain video", unit="step", initial=step, total=max_steps)
    with (out / "log.jsonl").open("a") as logf:
        while (time.time() - t_start) < 60 * minutes and (max_steps is None or step < max_steps):
            loss = _train_step(model, opt, rng, gen, by_cat, step, lr, batch_size, p_drop, weights, t_mean)
            step += 1
            # the EMA warms up (decay (1 + step) / (10 + step) at first): the temporal layers start at zero
            _ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            logf.write(json.dumps({"step": step, "loss": loss, "minutes": elapsed()}) + "\n")
            if step % save_every == 0:
                logf.flush()
                save_video_toy(ema, out / f"step_{step:06d}", {"step": step, "minutes": elapsed()})
                _save_state(out, model, ema, opt, rng, gen, step, elapsed(), recipe)
    bar.close()
    save_video_toy(ema, last, {"step": step, "minutes": elapsed()})
    return last
