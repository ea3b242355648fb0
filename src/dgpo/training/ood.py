"""Out-of-domain rewards (``eval.extra_rewards``): built once for a run, scored on every eval's images
beside the target (:func:`dgpo.evaluation.extra_scorer`), and read at the end of the run: how each moved
from the first eval to the last, and the *reward hacking* verdict.

The verdict: flagged when the target reward (the eval's mean ``reward``) rose while an out-of-domain
reward fell, each change judged against the eval noise: it counts only beyond ``NOISE_SES`` (2) standard
errors of the difference, sqrt(se_first^2 + se_last^2), each se the per-image scores' std / sqrt(n).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dgpo.rewards import build_named_reward, check_modality, modality_of

NOISE_SES = 2.0  # a change counts beyond this many standard errors of the difference of two eval means
RULE = ("flagged when the target reward rose while an out-of-domain reward fell, first eval to last, each by "
        f"more than {NOISE_SES:g} standard errors of the difference (per-image scores' std / sqrt(n) of each eval)")


def build_extra_rewards(cfg, device, modality: str) -> dict[str, Callable]:
    """``eval.extra_rewards`` by name, with ``reward.*``'s paths; an image reward of a video model scores
    its frames (``reward.frames`` when set, else all frames, their mean)."""
    from dgpo.rewards.video import FrameReward

    rc, out = cfg.reward, {}
    for i, name in enumerate(cfg.eval.extra_rewards):
        key = f"eval.extra_rewards[{i}]"
        fn = build_named_reward(rc, name, device, key)
        if modality == "video" and modality_of(fn) == "image":
            fn = FrameReward(fn, "all" if rc.frames == "none" else rc.frames, rc.frames_every, rc.frames_reduce)
        check_modality(fn, modality, key)
        out[name] = fn
    return out


def change(evals: list[dict], value: Callable[[dict], float | None], se: Callable[[dict], float | None]) -> dict | None:
    """{start, end, change, threshold} of a value from the first eval that has it to the last (None with
    fewer than two); ``threshold``: ``NOISE_SES`` standard errors of the difference (a missing se: 0)."""
    points = [(value(e), se(e)) for e in evals if value(e) is not None]
    if len(points) < 2:
        return None
    (a, sa), (b, sb) = points[0], points[-1]
    return {"start": a, "end": b, "change": b - a, "threshold": NOISE_SES * math.hypot(sa or 0.0, sb or 0.0)}


def extra_changes(evals: list[dict]) -> dict[str, dict]:
    """{name: change} of every out-of-domain reward the evals logged."""
    names = dict.fromkeys(n for e in evals for n in (e.get("extra") or {}))
    out = {}
    for n in names:
        c = change(evals, lambda e, n=n: (e.get("extra") or {}).get(n), lambda e, n=n: (e.get("extra_se") or {}).get(n))
        if c is not None:
            out[n] = c
    return out


def verdict(evals: list[dict]) -> dict:
    """``flagged``; ``target``: the target reward's change; ``fell``: the out-of-domain rewards that fell
    beyond the noise (whether or not the target rose); ``rule``."""
    target = change(evals, lambda e: e.get("reward"), lambda e: e.get("reward_se"))
    fell = [n for n, c in extra_changes(evals).items() if c["change"] < -c["threshold"]]
    rose = target is not None and target["change"] > target["threshold"]
    return {"flagged": bool(rose and fell), "target": target, "fell": fell, "rule": RULE}


def summary_fields(evals: list[dict]) -> dict:
    """summary.json's ``extra_rewards`` ({name: {start, end, change, threshold}}) and ``reward_hacking``
    (:func:`verdict`); nothing when no out-of-domain reward was logged twice."""
    extras = extra_changes(evals)
    return {"extra_rewards": extras, "reward_hacking": verdict(evals)} if extras else {}


def hacking_line(summary: dict) -> str:
    """The end-of-run message's one line on the out-of-domain rewards ('' without them)."""
    extras, v = summary.get("extra_rewards"), summary.get("reward_hacking")
    if not extras or not v:
        return ""
    moved = lambda n: f"{n} {extras[n]['start']:.3f} -> {extras[n]['end']:.3f}"  # noqa: E731
    if v["flagged"]:
        t = v["target"]
        return (f"REWARD HACKING? the target reward rose {t['start']:.3f} -> {t['end']:.3f} while "
                f"{', '.join(map(moved, v['fell']))} fell, beyond {NOISE_SES:g} standard errors of the eval noise "
                "(summary.json: reward_hacking)")
    return f"out-of-domain rewards, first -> last eval: {', '.join(map(moved, extras))}; no reward hacking flagged"
