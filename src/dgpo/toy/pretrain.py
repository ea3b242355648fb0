"""`dgpo toy pretrain`: train the toy base model from scratch on rendered images.

Rectified-flow matching (SD3's convention, logit-normal t), prompt dropout for classifier-free
guidance, an EMA of the weights (what is shipped), snapshots every ``save_every`` steps so the base
can be picked by measured accuracy.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from dgpo.errors import InputError
from dgpo.schedules import interpolate
from dgpo.toy import grammar
from dgpo.toy.model import ToyModelConfig, ToyUNet, tokenize
from dgpo.toy.render import render
from dgpo.toy.weights import load_toy, save_toy, with_pos_embed
from dgpo.training import checkpoints

log = logging.getLogger(__name__)
RESUME_FIX = "move this checkpoint folder aside to resume from the one before, or pretrain into another --out"


def parse_category_weights(text: str) -> dict[str, float]:
    """``--weights`` ("single_object=3,colors=2") as a dict; a bad item is an InputError naming it."""
    weights = {}
    for item in filter(None, text.split(",")):
        cat, _, w = item.partition("=")
        try:
            value = float(w)
        except ValueError:
            value = -1.0
        if cat not in grammar.CATEGORIES or not (math.isfinite(value) and value >= 0):
            raise InputError(f"--weights: {item!r} must be CATEGORY=WEIGHT with CATEGORY in "
                             f"{list(grammar.CATEGORIES)} and a weight >= 0")
        weights[cat] = value
    return weights


def make_batch(rng: random.Random, pool, by_cat, n: int, p_drop: float, weights: dict | None = None):
    metas = [grammar.sample_pretrain(rng, pool, by_cat, weights) for _ in range(n)]
    x0 = torch.from_numpy(np.stack([render(m, rng) for m in metas])) * 2 - 1
    prompts = ["" if rng.random() < p_drop else m["prompt"] for m in metas]
    return x0, prompts


def flow_matching_loss(model: ToyUNet, x0: torch.Tensor, prompts: list[str], gen: torch.Generator,
                       t_mean: float = 0.0):
    """Mean ||v_theta(x_t, t) - (eps - x0)||^2 with logit-normal t (SD3), location ``t_mean``.

    Layout (where objects go, hence relations such as "left of") is decided at high noise only: at
    ``t_mean`` 0 about 4 % of the samples have t > 0.85; at 1.0 about 23 %."""
    b = x0.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=gen) + t_mean)
    eps = torch.randn(x0.shape, generator=gen)
    x_t = interpolate(x0, eps, t)
    text = model.text_encoder(tokenize(prompts, model.cfg.max_tokens))
    return (model(x_t, t, text) - (eps - x0)).pow(2).mean()


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


def _initial_model(init, cfg: ToyModelConfig | None, pos_embed: bool) -> ToyUNet:
    if init is None:
        cfg = cfg or ToyModelConfig()
        return ToyUNet(replace(cfg, pos_embed=cfg.pos_embed or pos_embed))
    model = load_toy(init).train()
    return with_pos_embed(model) if pos_embed else model


def _save_state(out: Path, model, ema, opt, rng: random.Random, gen: torch.Generator, step: int,
                minutes: float, recipe: dict) -> None:
    """Everything a continued run needs to go on bit for bit: weights, EMA, AdamW moments, both RNGs,
    written as a training checkpoint (``out/checkpoints/step_N``: manifest, atomic rename, the newest
    two kept; see :mod:`dgpo.training.checkpoints`)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        tensors |= {f"opt.{i}.{k}": torch.as_tensor(v) for k, v in st.items()}
    tensors["gen"] = gen.get_state()
    version, internal, gauss = rng.getstate()
    meta = {"step": step, "minutes": minutes, "recipe": recipe, "python_rng": [version, list(internal), gauss]}
    with checkpoints.writing(out / "checkpoints" / f"step_{step:06d}", step, keep=2) as tmp:
        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp / "train.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta) + "\n")


def _load_state(out: Path, model, ema, opt, rng: random.Random, gen: torch.Generator, recipe: dict):
    """Restore the newest complete :func:`_save_state` checkpoint; returns (step, minutes). A different
    recipe is an error naming what differs."""
    folder = checkpoints.for_resume(out)
    meta = checkpoints.read_json(folder / "state.json", RESUME_FIX)
    tensors = checkpoints.read_tensors(folder / "train.safetensors", RESUME_FIX)
    changed = sorted(k for k in recipe if meta["recipe"].get(k) != recipe[k])
    if changed:
        raise InputError(f"--resume: {out} was pretrained with other settings ({', '.join(changed)}: "
                         f"{[meta['recipe'].get(k) for k in changed]} there, {[recipe[k] for k in changed]} now)")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    sd = opt.state_dict()
    sd["state"] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            sd["state"].setdefault(int(i), {})[name] = v
    opt.load_state_dict(sd)
    gen.set_state(tensors["gen"])
    version, internal, gauss = meta["python_rng"]
    rng.setstate((version, tuple(internal), gauss))
    return meta["step"], meta["minutes"]


def pretrain(
    out_dir: str | Path,
    minutes: float = 60.0,
    batch_size: int = 64,
    lr: float = 5e-4,
    ema_decay: float = 0.999,
    p_drop: float = 0.1,
    save_every: int = 250,
    seed: int = 0,
    cfg: ToyModelConfig | None = None,
    max_steps: int | None = None,
    init: str | Path | None = None,
    weights: dict | None = None,
    pos_embed: bool = False,
    t_mean: float = 0.0,
    resume: bool = False,
) -> Path:
    """Train until ``minutes`` of wall time (this call's) or ``max_steps`` (in all) pass; returns the
    final snapshot.

    ``init``: start from a toy checkpoint (its EMA weights) instead of a random init;
    ``weights``: pretraining category weights (None: uniform); ``pos_embed``: add (zero-initialised)
    position embeddings to an ``init`` checkpoint that has none; ``t_mean``: location of the
    logit-normal timestep density (positive: more high-noise samples). ``resume``: continue the run in
    ``out_dir`` from its last saved state (every ``save_every`` steps) exactly where it stopped: the
    same steps, batches and noise as an uninterrupted run.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    model = _initial_model(init, cfg, pos_embed)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    recipe = {"model": model.cfg.to_dict(), "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
              "p_drop": p_drop, "seed": seed, "init": None if init is None else str(init),
              "weights": weights or None, "t_mean": t_mean}
    recipe = json.loads(json.dumps(recipe))  # as state.json holds it (tuples become lists)
    step, minutes_before = _begin(out, resume, model, ema, opt, rng, gen, recipe)
    pool = grammar.pretrain_pool()
    by_cat = grammar.by_category(pool)
    t_start, last = time.time(), out / "final"
    elapsed = lambda: minutes_before + (time.time() - t_start) / 60
    bar = tqdm(desc="pretrain", unit="step", initial=step, total=max_steps)
    with (out / "log.jsonl").open("a") as logf:
        while (time.time() - t_start) < 60 * minutes and (max_steps is None or step < max_steps):
            loss = _train_step(model, opt, rng, gen, pool, by_cat, step, lr, batch_size, p_drop, weights, t_mean)
            step += 1
            warm = 1.0 if init is not None else (1 + step) / (10 + step)
            _ema_update(ema, model, min(ema_decay, warm))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            logf.write(json.dumps({"step": step, "loss": loss, "minutes": elapsed()}) + "\n")
            if step % save_every == 0:
                logf.flush()
                save_toy(ema, out / f"step_{step:06d}", {"step": step, "minutes": elapsed()})
                _save_state(out, model, ema, opt, rng, gen, step, elapsed(), recipe)
    bar.close()
    save_toy(ema, last, {"step": step, "minutes": elapsed()})
    return last


def _begin(out: Path, resume: bool, model, ema, opt, rng, gen, recipe: dict) -> tuple[int, float]:
    """(step, minutes so far): the saved state for ``resume``; else 0, refusing to start over a run."""
    if not resume:
        if checkpoints.candidates(out / "checkpoints"):
            raise InputError(f"{out} holds a pretraining run; continue it with --resume or choose another --out")
        return 0, 0.0
    step, minutes = _load_state(out, model, ema, opt, rng, gen, recipe)
    log.info("resuming %s at step %d", out, step)
    _truncate_log(out / "log.jsonl", step)
    return step, minutes


def _train_step(model, opt, rng, gen, pool, by_cat, step, lr, batch_size, p_drop, weights, t_mean) -> float:
    for g in opt.param_groups:
        g["lr"] = lr * min(1.0, (step + 1) / 200)
    x0, prompts = make_batch(rng, pool, by_cat, batch_size, p_drop, weights)
    loss = flow_matching_loss(model, x0, prompts, gen, t_mean)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows past the resumed step (written after the last saved state)."""
    if not path.is_file():
        return
    keep = []
    for row in path.read_text().splitlines():
        try:
            if json.loads(row)["step"] <= step:
                keep.append(row)
        except (ValueError, KeyError, TypeError):  # a row torn by the kill
            pass
    path.write_text("".join(r + "\n" for r in keep))
