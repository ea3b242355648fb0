"""Validation of a checkpoint's contents, once read (:mod:`dgpo.training.checkpoints` reads the files):
tensors against the model, optimizer state against the optimizer, the trainer's state.json. Every failure
is a :class:`~dgpo.errors.CheckpointError` naming the file and the fix, raised before anything is loaded
into a model or an optimizer. This module reads no files."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dgpo.errors import CheckpointError, short

FIX = "move this checkpoint folder aside to resume from the one before, or train without --resume"
ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def match_tensors(state: dict[str, torch.Tensor], expected: list[tuple[str, torch.Tensor]], what: str) -> None:
    """``state`` holds exactly the tensors named in ``expected``, each of its shape and a float dtype."""
    names = [n for n, _ in expected]
    missing = [n for n in names if n not in state]
    unexpected = sorted(set(state) - set(names))
    hint = "the checkpoint is from another model or config (model.*, train.lora_rank, train.lora_targets)"
    if missing or unexpected:
        raise CheckpointError(f"{what}: tensors do not match the model (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}): {hint}")
    for n, p in expected:
        t = state[n]
        if tuple(t.shape) != tuple(p.shape):
            raise CheckpointError(f"{what}: tensor {n!r} has shape {tuple(t.shape)}, the model's {tuple(p.shape)}: "
                                  f"{hint}")
        if not t.dtype.is_floating_point:
            raise CheckpointError(f"{what}: tensor {n!r} holds {t.dtype}, not floats: {hint}")


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict, opt: torch.optim.Optimizer, where: Path) -> dict:
    """The ``opt.load_state_dict`` argument from optimizer.safetensors + optimizer.json, checked against
    ``opt``: the same groups and parameter count, Adam moments of each parameter's shape, hyper-
    parameters of the right types."""
    groups, scalars = meta.get("param_groups"), meta.get("scalars")
    bad = f"{where / 'optimizer.json'}: not the optimizer of this run"
    if not isinstance(groups, list) or not isinstance(scalars, dict) or len(groups) != len(opt.param_groups):
        raise CheckpointError(f"{bad} (param_groups / scalars); {FIX}")
    params: dict[int, torch.Tensor] = {}
    for saved, live in zip(groups, opt.param_groups):
        ids = saved.get("params") if isinstance(saved, dict) else None
        if not isinstance(ids, list) or len(ids) != len(live["params"]) or not all(_is_count(i) for i in ids):
            raise CheckpointError(f"{bad} (a group of {len(live['params'])} parameters); {FIX}")
        _check_hyper(saved, live, bad)
        params.update(zip(ids, live["params"]))
    if len(params) != sum(len(g["params"]) for g in opt.param_groups):
        raise CheckpointError(f"{bad} (parameter ids repeat); {FIX}")
    keys = ADAM_STATE + (("max_exp_avg_sq",) if any(g.get("amsgrad") for g in opt.param_groups) else ())
    state: dict[int, dict] = {}
    for key, v in [*tensors.items(), *scalars.items()]:
        idx, _, k = key.partition(".")
        if not idx.isdigit() or int(idx) not in params or k not in keys:
            raise CheckpointError(f"{bad}: unexpected state entry {short(key)}; {FIX}")
        state.setdefault(int(idx), {})[k] = v
    for idx, st in state.items():
        p = params[idx]
        if set(st) != set(keys):
            raise CheckpointError(f"{bad}: parameter {idx} has state {sorted(st)}, expected {list(keys)}; {FIX}")
        step = st["step"]
        ok_step = (torch.is_tensor(step) and step.numel() == 1 and step.dtype.is_floating_point
                   and bool(torch.isfinite(step).all()) and float(step) >= 0) or (_is_number(step) and step >= 0)
        moments_ok = all(torch.is_tensor(st[k]) and tuple(st[k].shape) == tuple(p.shape)
                         and st[k].dtype.is_floating_point for k in keys[1:])
        if not ok_step or not moments_ok:
            raise CheckpointError(f"{bad}: the state of parameter {idx} does not fit its shape {tuple(p.shape)}; {FIX}")
    return {"state": state, "param_groups": groups}


def _check_hyper(saved: dict, live: dict, bad: str) -> None:
    """Each hyperparameter the live group has keeps its kind: a bool, a finite number >= 0, a pair of numbers
    in [0, 1); one the checkpoint lacks (e.g. written by an older torch) takes the live group's value."""
    for key, ref in live.items():
        if key == "params":
            continue
        if key not in saved:
            saved[key] = list(ref) if isinstance(ref, tuple) else ref
            continue
        v = saved[key]
        if isinstance(ref, bool) or ref is None:
            ok = v is None or isinstance(v, bool)
        elif isinstance(ref, (int, float)):
            ok = _is_number(v) and v >= 0
        elif isinstance(ref, (tuple, list)):  # Adam's betas, each in [0, 1) as torch's constructor demands
            ok = isinstance(v, list) and len(v) == len(ref) and all(_is_number(x) and 0 <= x < 1 for x in v)
        else:
            ok = isinstance(v, type(ref))
        if not ok:
            raise CheckpointError(f"{bad}: param_groups {key}={short(v)}; {FIX}")


def check_trainer_state(state: dict, where: Path) -> None:
    """state.json as the trainer reads it on resume."""
    for key in ("step", "epoch"):
        if not _is_count(state.get(key)):
            raise CheckpointError(f"{where}: {key!r} must be an integer >= 0, got {short(state.get(key))}; {FIX}")
    evals = state.get("evals")
    if not isinstance(evals, list) or not all(isinstance(e, dict) and _is_count(e.get("step")) for e in evals):
        raise CheckpointError(f"{where}: 'evals' must be a list of eval rows with a 'step'; {FIX}")
    for key in ("train_time", "next_eval_s"):
        if key in state and not (_is_number(state[key]) and state[key] >= 0):
            raise CheckpointError(f"{where}: {key!r} must be a number >= 0, got {short(state[key])}; {FIX}")
    if not isinstance(state.get("algorithm", {}), dict):
        raise CheckpointError(f"{where}: 'algorithm' must be an object, got {short(state['algorithm'])}; {FIX}")
    if "images" in state and not _is_count(state["images"]):
        raise CheckpointError(f"{where}: 'images' must be an integer >= 0, got {short(state['images'])}; {FIX}")
