"""`dgpo toy pretrain --world edit`: train the toy editing base on rendered (source, target) pairs.

The shared loop of :mod:`dgpo.toy.pretrain_loop` (rectified-flow matching with logit-normal t, prompt
dropout for classifier-free guidance, an EMA of the weights, snapshots every ``save_every`` steps,
resumable bit for bit) on edits drawn by :func:`dgpo.toy.edit_grammar.sample_pretrain`: an instruction
that names no held-out binding, a fresh scene; x0 is the target scene drawn, the condition the
instruction and the source scene drawn. As in InstructPix2Pix, a dropped instruction ("") still sees
the source and still learns the target.

``init``: ``"image"`` (default) starts from the shipped image base (:func:`dgpo.toy.edit_model.from_image_base`:
the source channels at zero); ``"scratch"`` a random network of ``cfg``; a folder: a toy editing
checkpoint (continued) or an image toy checkpoint (as ``"image"``).
"""

from __future__ import annotations

import random
from pathlib import Path

from dgpo.toy import edit_grammar
from dgpo.toy.edit_model import EDIT_KIND, ToyEditModelConfig, ToyEditUNet, from_image_base, scene_images
from dgpo.toy.pretrain_loop import LoopOptions, World, parse_weights, run, start_model


def parse_edit_weights(text: str) -> dict[str, float]:
    """``--weights`` for the editing world ("move=2,recolor=1") as a dict."""
    return parse_weights(text, edit_grammar.CATEGORIES)


def initial_edit_model(init: str | Path | None, cfg: ToyEditModelConfig | None) -> ToyEditUNet:
    """The network pretraining starts from (see the module docstring for ``init``)."""
    return start_model(init, lambda: ToyEditUNet(cfg or ToyEditModelConfig()), EDIT_KIND.kind, from_image_base,
                       EDIT_KIND.load)


def make_edit_batch(rng: random.Random, by_cat: dict, n: int, p_drop: float, weights: dict | None = None):
    """``n`` edits: targets [n, 3, S, S] in [-1, 1], instructions ("" with probability ``p_drop``), sources."""
    rows = [edit_grammar.sample_pretrain(rng, by_cat, weights) for _ in range(n)]
    prompts = ["" if rng.random() < p_drop else m["prompt"] for m in rows]
    return scene_images([m["target_scene"] for m in rows]), prompts, scene_images([m["source_scene"] for m in rows])


def pretrain_edit(out_dir: str | Path, cfg: ToyEditModelConfig | None = None, init: str | Path | None = "image",
                  weights: dict | None = None, **options) -> Path:
    """Train until ``minutes`` of wall time (this call's) or ``max_steps`` (in all) pass; returns the
    final snapshot (``out_dir/final``; ``out_dir/step_N`` every ``save_every`` steps). ``options``: the
    loop's settings (:class:`~dgpo.toy.pretrain_loop.LoopOptions`; ``batch_size`` 64 edits by default);
    ``resume``: continue the run in ``out_dir`` from its last saved state exactly where it stopped."""
    by_cat = edit_grammar.by_category(edit_grammar.pretrain_pool())

    def batch(rng: random.Random, net: ToyEditUNet, n: int, p_drop: float):
        x0, prompts, source = make_edit_batch(rng, by_cat, n, p_drop, weights)
        return x0, prompts, {"source": source}

    world = World("edit", batch, EDIT_KIND.save, recipe={"world": "edit"})
    return run(world, out_dir, lambda: initial_edit_model(init, cfg), LoopOptions(**options), init, weights)
