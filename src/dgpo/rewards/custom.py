"""A user's own reward: a Python callable given directly, or named as ``"package.module:function"``.

In a config, ``reward.name: mypkg.rewards:brightness`` (alone, or as an item of a ``reward.name``
list beside built-in rewards, with ``reward.weights``) imports ``mypkg.rewards`` with importlib and
takes its attribute ``brightness`` (a dotted path after the colon reaches a nested attribute, e.g.
``mod:Scorer.default``). The module must be importable by the training process: an installed
package, or a folder on ``PYTHONPATH`` (``PYTHONPATH=. dgpo train ...`` for a ``my_rewards.py`` in
the current folder); every process of a multi-GPU run imports it. A class is instantiated once, with
``device=<the training device>`` when its ``__init__`` takes a ``device`` argument, else with no
arguments; anything else callable is used as it is. From Python, :func:`as_reward` wraps a callable
(``dgpo.rewards.build_reward_from_config(rc, device, reward=fn)`` and ``build_reward(fn)`` call it).

The contract (how the training loop, the evals and ``dgpo reward serve`` call every reward)::

    def my_reward(images: torch.Tensor, metas: list[dict]) -> torch.Tensor: ...

* ``images``: float32 ``[B, 3, H, W]``, RGB in ``[0, 1]``, decoded from the rollout's latents, on the
  model's device (a CUDA tensor when training on a GPU; move it where your scorer runs). Scoring the
  8-bit image a PNG would hold: ``(images * 255).round().to(torch.uint8)``.
* ``metas``: ``B`` metadata rows, one per image, in the same order; each is a dict with at least
  ``"prompt"`` (str). GenEval-format prompt files add ``"tag"`` (the category) and ``"include"`` /
  ``"exclude"`` clauses, and a ``.jsonl`` row's other keys come along unchanged (a place for your
  own per-prompt data, e.g. a reference answer); a ``.txt`` prompt file gives ``{"prompt", "include": []}``.
  The ``G`` images of a group share one prompt and one row object: read rows, do not change them.
* returns one score per image, higher is better: a tensor of shape ``[B]`` (any real dtype, any
  device; a numpy array or a list of ``B`` numbers is accepted too). Anything else (``[B, 1]``, a
  scalar, ``None``, a dict) is a :class:`RewardOutputError` naming the reward, raised at the call and
  not retried: it stops the run at once. A NaN or infinite score is allowed: the trainer leaves that
  image's whole group out of the epoch and counts it (``nonfinite_rewards``). Only differences
  within a group move the policy (advantages are normalised per group), so the scale is free.
* it may raise: the trainer retries a failed call (``reward.retries``, ``reward.backoff_s``), and
  after that leaves the call's groups out of the epoch (``reward.max_failures`` epochs in a row stop
  the run); raise an exception with ``permanent = True`` to stop at once instead.
* it is called from one background thread while the next chunk is generated (``reward.overlap``),
  and with ``reward.call_timeout_s`` an abandoned slow call may still run beside its retry; autograd
  is not switched off for it (wrap a network's forward in ``torch.no_grad()``).

Optional methods of a reward object, used where present (the built-in rewards' protocol):

* ``details(images, metas) -> (scores [B], correct [B] of 0/1)``: also a strict correctness per image
  (GenEval-style); the trainer then logs the per-step pass@G (``correct`` is a flag per image from
  this method, not an attribute);
* ``eval_scores(images, metas) -> [(correct, score)] * B`` (a third item, a dict of extra numbers
  per image, joins the eval rows): what ``dgpo eval`` and in-training evals report as correct /
  reward; without it an eval reports the score as both;
* ``version``: a string naming the scorer and its weights (logged; ``dgpo reward serve`` reports it);
* ``modality``: ``"image"`` (the default when absent) or ``"video"``: a video reward is called with
  videos, float32 ``[B, F, 3, H, W]`` in ``[0, 1]`` (B videos of F frames), and returns one score per
  video. A reward that does not score what the model makes is refused before training
  (:func:`dgpo.rewards.check_modality`); ``reward.frames`` scores an image reward on a video's frames.

Component rewards and their weights (``.parts`` / ``.weights``) are read from a
:class:`~dgpo.rewards.multi.MultiReward` only, which :func:`as_reward` passes through unchanged: an
attribute ``weights`` on any other reward is ignored. To mix your reward with built-in ones, list
them in ``reward.name`` (the weighted sum trains, each component is logged as
``reward_<name>_mean``), or build a ``MultiReward`` of :func:`as_reward` objects.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

import torch

from dgpo.errors import InputError, short
from dgpo.rewards.modality import modality_of

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
CUSTOM_NAME = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*")
"""The form of a user's reward name: ``package.module:attribute`` (dotted on both sides)."""


class RewardOutputError(InputError):
    """A user's reward returned something that is not one score per image (not retried: ``permanent``)."""

    permanent = True  # dgpo.rewards.retry.GuardedCall raises it at once instead of retrying


def is_custom_name(name: object) -> bool:
    """Whether ``name`` has the form ``package.module:function`` (syntax only; nothing is imported)."""
    return isinstance(name, str) and CUSTOM_NAME.fullmatch(name) is not None


def resolve(spec: str, key: str = "reward.name") -> Any:
    """The object ``"package.module:attr.path"`` names; an :class:`~dgpo.errors.InputError` naming
    ``key`` when the name is malformed, the module or the attribute does not exist, or the object is not
    callable. An exception raised by the module's own code while it is imported propagates unchanged."""
    if not is_custom_name(spec):
        raise InputError(f"{key}: {short(spec)} is neither a built-in reward nor of the form "
                         "'package.module:function'")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise InputError(f"{key}: {spec!r}: there is no module {e.name!r} to import (install its package, "
                             "or put its folder on PYTHONPATH, e.g. PYTHONPATH=. for the current folder)") from None
        raise InputError(f"{key}: {spec!r}: importing {module_name!r} failed: {e}") from e
    except (ImportError, SyntaxError) as e:
        raise InputError(f"{key}: {spec!r}: importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = module_name if i == 0 else f"{module_name}:{'.'.join(attr.split('.')[:i])}"
            raise InputError(f"{key}: {spec!r}: {where} has no attribute {part!r}") from None
    if not callable(obj):
        raise InputError(f"{key}: {spec!r} is a {type(obj).__name__}, not a callable; name a function "
                         "(images [B, 3, H, W], metas) -> scores [B], or a class whose instances are one")
    return obj


def load_reward(spec: str, device: str | torch.device = "cpu", key: str = "reward.name") -> CustomReward:
    """The reward ``"package.module:function"`` names, wrapped by :func:`as_reward`. A class is
    instantiated (with ``device=device`` when its ``__init__`` takes ``device``)."""
    obj = resolve(spec, key)
    if inspect.isclass(obj):
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):  # a builtin or C class: no signature to read
            params = {}
        required = [n for n, p in params.items() if n != "device" and p.default is p.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if required:
            raise InputError(f"{key}: {spec!r} is a class whose __init__ needs {required}; dgpo creates it with "
                             "no arguments (or device=...): give them defaults, or name a function or an instance")
        obj = obj(device=device) if "device" in params else obj()
        if not callable(obj):
            raise InputError(f"{key}: {spec!r}: its instances are not callable (define __call__(images, metas))")
    return CustomReward(obj, spec)


def as_reward(fn: Callable, name: str | None = None) -> Any:
    """A user's callable as the reward object the training loop and the evals call: each call's result
    is checked (one score per image, else :class:`RewardOutputError`) and returned as a float32 CPU
    tensor [B]; ``details`` and ``eval_scores``, where ``fn`` has them, are forwarded (checked too).
    A :class:`~dgpo.rewards.multi.MultiReward` or an already wrapped reward is returned as it is."""
    from dgpo.rewards.multi import MultiReward

    if isinstance(fn, (CustomReward, MultiReward)):
        return fn
    return CustomReward(fn, name)


def spec_of(fn: Any) -> str | None:
    """``"module:qualname"`` of a function or class that importing that name gives back (``fn`` itself),
    else None (a lambda, a closure, an object defined in ``__main__``): the name a run's config.yaml can
    record for a reward given as a Python object."""
    fn = getattr(fn, "fn", fn) if isinstance(fn, CustomReward) else fn
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or not is_custom_name(f"{module}:{qualname}"):
        return None
    try:
        return f"{module}:{qualname}" if resolve(f"{module}:{qualname}") is fn else None
    except InputError:
        return None


def _describe(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)


def check_scores(out: Any, n: int, who: str) -> torch.Tensor:
    """``out`` as a float32 CPU tensor of ``n`` scores, or a :class:`RewardOutputError` saying what came back."""
    expected = f"expected one score per image: a tensor of shape [{n}]"
    if out is None or isinstance(out, (str, bytes, dict)) or not isinstance(out, (torch.Tensor, list, tuple)) \
            and not hasattr(out, "__array__"):
        raise RewardOutputError(f"reward {who} returned {type(out).__name__} {short(out)}; {expected}")
    try:
        t = out if isinstance(out, torch.Tensor) else torch.as_tensor(out)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RewardOutputError(f"reward {who} returned {type(out).__name__} {short(out)}, not numbers "
                                f"({e}); {expected}") from None
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.bool, torch.uint8, torch.int8,
                                                                     torch.int16, torch.int32, torch.int64)):
        raise RewardOutputError(f"reward {who} returned a tensor of {t.dtype}; {expected} of real numbers")
    if tuple(t.shape) != (n,):
        hint = " (.squeeze(-1) it)" if tuple(t.shape) == (n, 1) else ""
        raise RewardOutputError(f"reward {who} returned shape {list(t.shape)} for {n} images{hint}; {expected}")
    return t.detach().to("cpu", torch.float32)


class CustomReward:
    """A user's reward callable behind the checks of :func:`check_scores` (see the module's contract)."""

    def __init__(self, fn: Callable, name: str | None = None):
        if not callable(fn):
            raise InputError(f"reward {short(name or fn)}: {type(fn).__name__} {short(fn)} is not callable; give a "
                             "function (images [B, 3, H, W] in [0, 1], metas) -> scores [B]")
        self.fn, self.name = fn, name or _describe(fn)
        self.version = str(getattr(fn, "version", None) or self.name)
        self.modality = modality_of(fn)
        if callable(getattr(fn, "details", None)):
            self.details = self._details
        if callable(getattr(fn, "eval_scores", None)):
            self.eval_scores = self._eval_scores

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        return check_scores(self.fn(images, metas), len(images), repr(self.name))

    def _details(self, images: torch.Tensor, metas: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fn.details(images, metas)
        who = f"{self.name!r} (details)"
        if not isinstance(out, tuple) or len(out) != 2:
            raise RewardOutputError(f"reward {who} returned {type(out).__name__} {short(out)}; expected a tuple "
                                    f"(scores [{len(images)}], strict correctness [{len(images)}] of 0/1)")
        scores, correct = out
        return check_scores(scores, len(images), who), check_scores(correct, len(images), f"{who} correctness")

    def _eval_scores(self, images: torch.Tensor, metas: list[dict]) -> list[tuple]:
        out = self.fn.eval_scores(images, metas)
        who = f"reward {self.name!r} (eval_scores)"
        try:
            rows = list(out)
        except TypeError:
            rows = None
        if rows is None or len(rows) != len(images) or not all(
                isinstance(r, (tuple, list)) and len(r) in (2, 3) for r in rows):
            raise RewardOutputError(f"{who} returned {type(out).__name__} {short(out)}; expected {len(images)} "
                                    "tuples (correct, score) or (correct, score, {name: value})")
        return [tuple(r) for r in rows]

    def __repr__(self) -> str:
        return f"CustomReward({self.name!r})"
