"""Several rewards as one: the weighted sum trains, every component is reported.

``MultiReward(images, metas)`` is ``sum_k w_k r_k`` (Flow-GRPO's ``multi_score``); ``components``
gives each raw ``r_k``, which the trainer logs as ``reward_<name>_mean`` and, with
``advantages.combine: per_component``, normalises group by group before weighting
(:func:`dgpo.advantages.multi_reward_advantages`).

All components score one kind of input: images [B, 3, H, W], or videos [B, F, 3, H, W] (each part
gets the same tensor); ``modality`` is theirs, and a mixed list is refused (an image reward joins video
rewards through :class:`~dgpo.rewards.video.FrameReward`: ``reward.frames``).
"""

from __future__ import annotations

import torch

from dgpo.errors import InputError
from dgpo.rewards.modality import modality_of


class MultiReward:
    def __init__(self, components: dict, weights: dict[str, float]):
        if set(components) != set(weights):
            raise ValueError(f"multi-reward: components {sorted(components)}, weights for {sorted(weights)}")
        self.parts, self.weights = dict(components), dict(weights)
        kinds = {n: modality_of(f) for n, f in self.parts.items()}
        if len(set(kinds.values())) > 1:
            listed = ", ".join(f"{n} ({k})" for n, k in kinds.items())
            raise InputError(f"reward.name: the rewards {listed} do not score one kind of input; a video model "
                             "scores its image rewards on frames with reward.frames=all (or first / every_k)")
        self.modality = next(iter(kinds.values()), "image")
        self.version = " + ".join(f"{w:g}*{n}[{getattr(f, 'version', type(f).__name__)}]"
                                  for n, f, w in zip(self.parts, self.parts.values(), self.weights.values()))

    def components(self, images: torch.Tensor, metas: list[dict]) -> dict[str, torch.Tensor]:
        """Each reward's raw values [B], in the order of ``reward.name``."""
        return self.components_and_correct(images, metas)[0]

    def components_and_correct(self, images: torch.Tensor, metas: list[dict]):
        """(each reward's raw values [B], the strict 0/1 correctness [B] of the first component that
        knows one (``details``: GenEval-style rewards) or None), each component called once."""
        out, correct = {}, None
        for name, fn in self.parts.items():
            if hasattr(fn, "details"):
                r, ok = fn.details(images, metas)
                correct = ok.float().cpu() if correct is None else correct
            else:
                r = fn(images, metas)
            r = torch.as_tensor(r).float().cpu().reshape(-1)
            if len(r) != len(images):
                raise ValueError(f"reward {name!r} returned {len(r)} values for {len(images)} images")
            out[name] = r
        return out, correct

    def combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of component values (any shape, e.g. gathered over processes)."""
        return sum(self.weights[n] * parts[n].double() for n in self.parts).float()

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        return self.combine(self.components(images, metas))

    def eval_scores(self, images: torch.Tensor, metas: list[dict]) -> list[tuple]:
        """(correct, weighted reward, {"reward_<name>": value}) per image. ``correct`` is the strict
        correctness of the first component that has one (GenEval), else the weighted reward. A
        component with a strict score reports its partial credit, as in single-reward evals."""
        parts, correct = {}, None
        for name, fn in self.parts.items():
            if hasattr(fn, "eval_scores"):
                scored = fn.eval_scores(images, metas)
                correct = [s[0] for s in scored] if correct is None else correct
                parts[name] = torch.tensor([float(s[1]) for s in scored])
            else:
                parts[name] = torch.as_tensor(fn(images, metas)).float().cpu().reshape(-1)
        total = self.combine(parts).tolist()
        correct = total if correct is None else correct
        return [(correct[i], total[i], {f"reward_{n}": float(v[i]) for n, v in parts.items()})
                for i in range(len(images))]


def score_parts(fn, images: torch.Tensor, metas: list[dict]):
    """(reward [B], {component: [B]}, strict 0/1 correctness [B] or None) of any reward; components
    only for a :class:`MultiReward`; correctness where a reward knows it (``details``)."""
    if isinstance(fn, MultiReward):
        parts, correct = fn.components_and_correct(images, metas)
        return fn.combine(parts), parts, correct
    if hasattr(fn, "details"):
        r, correct = fn.details(images, metas)
        return torch.as_tensor(r).float().cpu().reshape(-1), {}, correct.float().cpu()
    return torch.as_tensor(fn(images, metas)).float().cpu().reshape(-1), {}, None
