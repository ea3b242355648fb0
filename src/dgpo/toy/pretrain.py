"""`dgpo toy pretrain`: train the toy base model from scratch on rendered images.

The shared loop of :mod:`dgpo.toy.pretrain_loop` (rectified-flow matching, logit-normal t, prompt
dropout, an EMA of the weights, snapshots every ``save_every`` steps so that the base can be picked by
measured accuracy, resumable) on images of :func:`dgpo.toy.grammar.pretrain_pool` captions.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dgpo.toy import grammar
from dgpo.toy.model import ToyModelConfig, ToyUNet
from dgpo.toy.pretrain_loop import LoopOptions, World, parse_weights, run
from dgpo.toy.render import render
from dgpo.toy.weights import load_toy, save_toy, with_pos_embed


def parse_category_weights(text: str) -> dict[str, float]:
    """``--weights`` ("single_object=3,colors=2") as a dict; a bad item is an InputError naming it."""
    return parse_weights(text, grammar.CATEGORIES)


def make_batch(rng: random.Random, pool, by_cat, n: int, p_drop: float, weights: dict | None = None):
    metas = [grammar.sample_pretrain(rng, pool, by_cat, weights) for _ in range(n)]
    x0 = torch.from_numpy(np.stack([render(m, rng) for m in metas])) * 2 - 1
    prompts = ["" if rng.random() < p_drop else m["prompt"] for m in metas]
    return x0, prompts


def _initial_model(init, cfg: ToyModelConfig | None, pos_embed: bool) -> ToyUNet:
    if init is None:
        cfg = cfg or ToyModelConfig()
        return ToyUNet(replace(cfg, pos_embed=cfg.pos_embed or pos_embed))
    model = load_toy(init).train()
    return with_pos_embed(model) if pos_embed else model


def pretrain(out_dir: str | Path, cfg: ToyModelConfig | None = None, init: str | Path | None = None,
             weights: dict | None = None, pos_embed: bool = False, **options) -> Path:
    """Train until ``minutes`` of wall time (this call's) or ``max_steps`` (in all) pass; returns the
    final snapshot. ``options``: the loop's settings (:class:`~dgpo.toy.pretrain_loop.LoopOptions`:
    ``minutes``, ``batch_size`` (64), ``lr``, ``ema_decay``, ``p_drop``, ``save_every``, ``seed``,
    ``max_steps``, ``t_mean``, ``resume``).

    ``init``: start from a toy checkpoint (its EMA weights) instead of a random init of ``cfg``;
    ``weights``: pretraining category weights (None: uniform); ``pos_embed``: add (zero-initialised)
    position embeddings to an ``init`` checkpoint that has none. ``resume``: continue the run in
    ``out_dir`` from its last saved state (every ``save_every`` steps) exactly where it stopped: the
    same steps, batches and noise as an uninterrupted run.
    """
    pool = grammar.pretrain_pool()
    by_cat = grammar.by_category(pool)

    def batch(rng: random.Random, net, n: int, p_drop: float):
        return (*make_batch(rng, pool, by_cat, n, p_drop, weights), {})

    # a continued (init) model's EMA starts at the full decay; a new one's warms up
    world = World("image", batch, save_toy, ema_warmup=init is None)
    return run(world, out_dir, lambda: _initial_model(init, cfg, pos_embed), LoopOptions(**options), init, weights)
