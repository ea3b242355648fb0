"""The pretraining loop every toy world shares (`dgpo toy pretrain --world image|video|edit`).

Rectified-flow matching in SD3's convention (logit-normal t, one per sample, location ``t_mean``),
prompt dropout for classifier-free guidance, AdamW with a 200-step linear warmup and gradient clipping at
1, an EMA of the weights (what ships), snapshots every ``save_every`` steps so that a base can be picked
by measured accuracy, and a resumable state (weights, EMA, AdamW moments, both random generators:
``resume`` goes on bit for bit). A world passes in what is its own (:class:`World`): how a batch is
drawn, how a snapshot is saved.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from dgpo.errors import InputError
from dgpo.schedules import interpolate
from dgpo.toy.model import tokenize
from dgpo.toy.weights import BUILTIN_BASE, checkpoint_kind, load_toy
from dgpo.training import checkpoints

log = logging.getLogger(__name__)
RESUME_FIX = "move this checkpoint folder aside to resume from the one before, or pretrain into another --out"
# (rng, network, n, p_drop) -> (x0 [n, ...] in [-1, 1], prompts ("" where dropped), extra condition {name: [n, ...]})
BatchFn = Callable[[random.Random, torch.nn.Module, int, float], tuple[torch.Tensor, list[str], dict]]


@dataclass(frozen=True)
class World:
    """What one toy world's pretraining adds to the shared loop."""

    name: str  # "image", "video", "edit": the progress bar's label
    batch: BatchFn
    save: Callable[[torch.nn.Module, Path, dict], None]  # (EMA network, folder, info)
    ema_warmup: bool = True  # EMA decay min(decay, (1 + step) / (10 + step)): new layers start from zero
    recipe: dict = field(default_factory=dict)  # the world's own recipe entries (resume refuses a change)


@dataclass(frozen=True)
class LoopOptions:
    """The shared loop's settings (every world's ``pretrain`` takes them as keywords)."""

    minutes: float = 60.0  # wall time of this call
    batch_size: int = 64
    lr: float = 5e-4  # after a 200-step linear warmup
    ema_decay: float = 0.999
    p_drop: float = 0.1  # prompt dropout (classifier-free guidance)
    save_every: int = 250  # a snapshot and the resumable state every N steps
    seed: int = 0
    max_steps: int | None = None  # in all, a resumed run's earlier steps included
    t_mean: float = 0.0  # location of the logit-normal timestep density (positive: more high noise)
    resume: bool = False  # continue the run in out_dir from its last saved state


def start_model(init, fresh: Callable[[], torch.nn.Module], kind: str,
                from_image: Callable[[torch.nn.Module], torch.nn.Module], load: Callable) -> torch.nn.Module:
    """The network a video or editing world's pretraining starts from: ``init`` None or ``"scratch"``:
    ``fresh()``; ``"image"``: ``from_image`` of the shipped image base; a checkpoint folder of the world's
    ``kind``: continued (``load``); another folder: ``from_image`` of that image toy checkpoint."""
    if init in (None, "scratch"):
        return fresh()
    if init == "image":
        return from_image(load_toy(BUILTIN_BASE)).train()
    if checkpoint_kind(init) == kind:
        return load(init).train()
    return from_image(load_toy(init)).train()


def parse_weights(text: str, categories) -> dict[str, float]:
    """``--weights`` ("single_object=3,colors=2") as a dict; a bad item is an InputError naming it."""
    weights = {}
    for item in filter(None, text.split(",")):
        cat, _, w = item.partition("=")
        try:
            value = float(w)
        except ValueError:
            value = -1.0
        if cat not in categories or not (math.isfinite(value) and value >= 0):
            raise InputError(f"--weights: {item!r} must be CATEGORY=WEIGHT with CATEGORY in "
                             f"{list(categories)} and a weight >= 0")
        weights[cat] = value
    return weights


def flow_matching_loss(model, x0: torch.Tensor, prompts: list[str], gen: torch.Generator, t_mean: float = 0.0,
                       extra: dict | None = None) -> torch.Tensor:
    """Mean ||v_theta(x_t, t) - (eps - x0)||^2 with logit-normal t (SD3), location ``t_mean``; ``extra``
    joins the text condition (an editing model's source images).

    Layout (where objects go, hence relations such as "left of") is decided at high noise only: at
    ``t_mean`` 0 about 4 % of the samples have t > 0.85; at 1.0 about 23 %."""
    b = x0.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=gen) + t_mean)
    eps = torch.randn(x0.shape, generator=gen)
    x_t = interpolate(x0, eps, t)
    text = model.text_encoder(tokenize(prompts, model.cfg.max_tokens, model.vocab))
    return (model(x_t, t, {**text, **(extra or {})}) - (eps - x0)).pow(2).mean()


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


def run(world: World, out_dir: str | Path, build: Callable[[], torch.nn.Module], o: LoopOptions, init=None,
        weights: dict | None = None) -> Path:
    """Train ``build()`` (called once the seeds are set) until ``o.minutes`` of wall time (this call's) or
    ``o.max_steps`` (in all) pass; returns the final EMA snapshot (``out_dir/final``). ``init`` and
    ``weights`` (what the world started from, its category weights) join the recipe that resume checks."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(o.seed)
    rng, gen = random.Random(o.seed), torch.Generator().manual_seed(o.seed)
    model = build()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=0.0)
    recipe = {**world.recipe, "model": model.cfg.to_dict(), "batch_size": o.batch_size, "lr": o.lr,
              "ema_decay": o.ema_decay, "p_drop": o.p_drop, "seed": o.seed,
              "init": None if init is None else str(init), "weights": weights or None, "t_mean": o.t_mean}
    recipe = json.loads(json.dumps(recipe))  # as state.json holds it (tuples become lists)
    step, minutes_before = _begin(out, o.resume, model, ema, opt, rng, gen, recipe)
    t_start, last = time.time(), out / "final"
    elapsed = lambda: minutes_before + (time.time() - t_start) / 60
    bar = tqdm(desc="pretrain" + ("" if world.name == "image" else f" {world.name}"), unit="step", initial=step,
               total=o.max_steps)
    with (out / "log.jsonl").open("a") as logf:
        while (time.time() - t_start) < 60 * o.minutes and (o.max_steps is None or step < o.max_steps):
            loss = _train_step(world, model, opt, rng, gen, step, o)
            step += 1
            warm = (1 + step) / (10 + step) if world.ema_warmup else 1.0
            _ema_update(ema, model, min(o.ema_decay, warm))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            logf.write(json.dumps({"step": step, "loss": loss, "minutes": elapsed()}) + "\n")
            if step % o.save_every == 0:
                logf.flush()
                world.save(ema, out / f"step_{step:06d}", {"step": step, "minutes": elapsed()})
                _save_state(out, model, ema, opt, rng, gen, step, elapsed(), recipe)
    bar.close()
    world.save(ema, last, {"step": step, "minutes": elapsed()})
    return last


def _train_step(world: World, model, opt, rng, gen, step: int, o: LoopOptions) -> float:
    for g in opt.param_groups:
        g["lr"] = o.lr * min(1.0, (step + 1) / 200)
    x0, prompts, extra = world.batch(rng, model, o.batch_size, o.p_drop)
    loss = flow_matching_loss(model, x0, prompts, gen, o.t_mean, extra)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


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
