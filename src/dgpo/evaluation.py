"""GenEval-style evaluation: generate images for a prompt set, score them, tabulate by category."""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dgpo.errors import UserError
from dgpo.models.base import FlowModel, encode_nulls, encode_rows
from dgpo.samplers.rollout import generate
from dgpo.toy import scorer
from dgpo.toy.edit_grammar import CATEGORIES as EDIT_CATEGORIES
from dgpo.toy.grammar import CATEGORIES
from dgpo.toy.video_grammar import CATEGORIES as VIDEO_CATEGORIES

log = logging.getLogger(__name__)
ImageFn = Callable[[list[dict], list[int]], torch.Tensor]


def model_image_fn(model: FlowModel, steps=10, shift=1.0, cfg_scale=4.5, method="dpm",
                   autocast=nullcontext) -> ImageFn:
    """Images [B, 3, H, W] in [0, 1] for (metadata rows, seeds) from a model; ``autocast`` covers the
    text encoding and the denoising, not the VAE (as in training rollouts and the official loop)."""

    def fn(metas: list[dict], seeds: list[int]) -> torch.Tensor:
        with autocast():
            cond, null = encode_rows(model, metas), encode_nulls(model, metas)
            x0 = generate(model, cond, null, seeds, steps, shift, cfg_scale, method)
        return model.decode(x0)

    return fn


def oracle_image_fn() -> ImageFn:
    """The renderer as a "model": proves the scorer (GenEval of ground truth)."""
    import random

    from dgpo.toy.render import render

    def fn(metas: list[dict], seeds: list[int]) -> torch.Tensor:
        return torch.stack([torch.from_numpy(render(m, random.Random(s))) for m, s in zip(metas, seeds)])

    return fn


def oracle_video_fn() -> ImageFn:
    """The toy video renderer as a "model": clips [B, F, 3, H, W] (proves the video scorer)."""
    import random

    from dgpo.toy.video_render import render_clip

    def fn(metas: list[dict], seeds: list[int]) -> torch.Tensor:
        return torch.stack([torch.from_numpy(render_clip(m, random.Random(s))) for m, s in zip(metas, seeds)])

    return fn


def oracle_edit_fn() -> ImageFn:
    """The toy editing world's target scenes drawn, as an editing "model" (proves the edit scorer)."""
    from dgpo.toy.edit_grammar import render_scene

    def fn(metas: list[dict], seeds: list[int]) -> torch.Tensor:
        return torch.stack([torch.from_numpy(render_scene(m["target_scene"])) for m in metas])

    return fn


def image_quality(images: np.ndarray) -> dict[str, float]:
    """Signals of the "blurred outputs" failure beside the reward, per batch [B, 3, H, W] in [0, 1]:
    ``sharpness``: mean |Laplacian| of the grey image (blur lowers it); ``off_palette``: share of
    off-palette pixels (artifacts); the statistics of :mod:`dgpo.rewards.toy_ood`."""
    from dgpo.rewards.toy_ood import laplacian_sharpness, off_palette_share

    return {"sharpness": float(laplacian_sharpness(images).mean()),
            "off_palette": float(off_palette_share(images).mean())}


ExtraFn = Callable[[torch.Tensor, list[dict]], dict[str, list]]


def extra_scorer(fns: dict[str, Callable], guard=None) -> ExtraFn:
    """Out-of-domain rewards (``eval.extra_rewards``) on a batch of eval images: {name: [score or None]}.
    With ``guard`` (a :class:`~dgpo.rewards.retry.GuardedCall`) each call is retried as the target's;
    a call that still fails, raises anything, or returns the wrong number of scores gives None for the
    batch, as does a non-finite score for its image: the eval goes on."""

    def score(images: torch.Tensor, metas: list[dict]) -> dict[str, list]:
        return {name: _extra_values(name, fn, images, metas, guard) for name, fn in fns.items()}

    return score


def _extra_values(name: str, fn: Callable, images: torch.Tensor, metas: list[dict], guard) -> list:
    try:
        out, report = guard(fn, images, metas) if guard is not None else (fn(images, metas), None)
        error = report.error if report is not None and out is None else ""
        values = [] if out is None else torch.as_tensor(out).float().flatten().cpu().tolist()
    except Exception as e:  # noqa: BLE001 - a fault of an out-of-domain reward never stops the eval
        if isinstance(e, UserError) or getattr(e, "permanent", False):
            raise  # a mistake in the setup (a 401, rows it cannot score): stop, as for the target reward
        error, values = f"{type(e).__name__}: {e}", []
    if len(values) != len(metas):
        log.warning("eval: extra reward %s left %d images unscored (%s)", name, len(metas),
                    error or f"{len(values)} scores for {len(metas)} images")
        return [None] * len(metas)
    return [v if math.isfinite(v) else None for v in values]


def settle_unscored(res: dict, desc: str, last_error: str = "") -> dict:
    """An eval's result where the reward left images unscored: a warning if some were scored (the scores
    are over the rest); if none was, a *missing* eval (``overall`` and ``reward`` null, ``missing`` says
    why), not a score of 0."""
    unscored, scored = res.get("unscored_images", 0), res["n_images"]
    if unscored and scored:
        log.warning("%s: %d of %d images left unscored (the reward failed after its retries, or scored NaN); "
                    "the scores are over the rest", desc, unscored, unscored + scored)
    elif unscored:
        why = (f"no image scored: the reward failed after its retries (or scored NaN) on all {unscored}"
               + (f"; the last error here: {last_error}" if last_error else ""))
        log.warning("%s is missing (%s); the run goes on", desc, why)
        return {"overall": None, "reward": None, "unscored_images": unscored, "missing": why}
    return res


def evaluate(
    image_fn: ImageFn,
    metas: list[dict],
    images_per_prompt: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    desc: str = "eval",
    min_per_category: int = 0,
    shard: tuple[int, int] = (0, 1),
    gather: Callable[[list[dict]], list[dict]] | None = None,
    score_fn: Callable[[torch.Tensor, list[dict]], list[tuple[float, float]]] | None = None,
    lockstep: bool = False,
    extra: ExtraFn | None = None,
) -> dict:
    """Strict GenEval accuracy per category, ``overall`` (mean of categories), partial reward, rows.

    ``min_per_category``: small categories get more images per prompt (at least this many images in
    each category), so that a 4-prompt category is not scored on 4 coin flips.
    ``shard=(rank, world)`` generates every world-th image; ``gather`` merges the rows of all processes.
    ``score_fn(images, metas) -> [(correct, reward)]`` replaces the toy GenEval scorer (e.g. a
    training reward for prompts without GenEval metadata; "correct" is then the reward itself); a
    third element, a dict (a multi-reward's ``{"reward_<name>": value}``), joins the row and its mean
    the summary; a ``score_fn`` that returns None for a batch (its reward failed after the caller's
    retries) leaves that batch unscored: the summary is over the scored images and counts the others
    in ``unscored_images``, and so does an image whose score is not finite (a reward's NaN).
    ``lockstep``: every process runs the same number of batches (FSDP: each forward is a collective);
    shorter shards repeat a job and drop its rows.
    ``extra``: out-of-domain rewards (:func:`extra_scorer`) on the same images; each row keeps
    ``extra: {name: score}`` and the summary their means (:func:`summarize`).
    """
    sizes: dict[str, int] = defaultdict(int)
    for m in metas:
        sizes[m.get("tag", "")] += 1
    per = {t: max(images_per_prompt, -(-min_per_category // n)) for t, n in sizes.items()}
    every = [(i, k) for i, m in enumerate(metas) for k in range(per[m.get("tag", "")])]
    jobs = every[shard[0] :: shard[1]]
    real = len(jobs)
    if lockstep and every:
        jobs += [(jobs or every)[-1]] * (-(-len(every) // shard[1]) - real)
    score = score_fn or (lambda imgs, ms: [scorer.score(img, m) for img, m in zip(imgs.float().cpu().numpy(), ms)])
    rows, unscored = [], 0  # unscored: images whose reward failed
    for start in tqdm(range(0, len(jobs), batch_size), desc=desc, unit="batch", leave=False):
        chunk = jobs[start : start + batch_size]
        batch = [metas[i] for i, _ in chunk]
        seeds = [seed * 1_000_003 + i * 97 + k for i, k in chunk]
        images = image_fn(batch, seeds)
        arrays = images.float().cpu().numpy()
        scores = score(images, batch)
        if scores is None:  # the reward failed for this batch: its images stay unscored
            unscored += max(0, min(len(chunk), real - start))
            continue
        ood = extra(images, batch) if extra is not None else {}
        for n, ((i, k), img, meta, (ok, part, *more)) in enumerate(zip(chunk, arrays, batch, scores)):
            if start + n >= real:  # lockstep padding
                break
            if not (_finite(ok) and _finite(part)):  # a NaN score: unscored, as a failed call's
                unscored += 1
                continue
            rows.append({"index": i, "sample": k, "tag": meta.get("tag", "reward"), "prompt": meta["prompt"],
                         "correct": ok, "reward": part, **(more[0] if more else {}),
                         **image_quality(img if img.ndim == 4 else img[None]),  # a video: over its frames
                         **({"extra": {k: v[n] for k, v in ood.items()}} if ood else {})})
    if gather is not None:
        rows = gather(rows)
        unscored = len(every) - len(rows)  # every process's unscored images
    return {**summarize(rows, images_per_prompt), **({"unscored_images": unscored} if unscored else {})}


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return True


def reward_scorer(reward_fn, guard=None) -> Callable[[torch.Tensor, list[dict]], list[tuple] | None]:
    """Score eval images with a training reward: its own ``eval_scores`` when it has one (GenEval's
    strict correctness, a multi-reward's components), else (reward, reward): overall = the mean reward.
    With ``guard`` (a :class:`~dgpo.rewards.retry.GuardedCall`) each batch's call is retried like a
    training reward call, and a batch whose call still fails scores None (left unscored, logged; the
    scorer's ``last_error`` keeps the error)."""
    if hasattr(reward_fn, "eval_scores"):
        score = reward_fn.eval_scores
    else:
        def score(images: torch.Tensor, metas: list[dict]) -> list[tuple[float, float]]:
            r = reward_fn(images, metas).float().cpu().tolist()
            return [(v, v) for v in r]

    if guard is None:
        return score

    def guarded(images: torch.Tensor, metas: list[dict]) -> list[tuple] | None:
        out, report = guard(score, images, metas)
        if report.failed:
            guarded.last_error = report.error
            log.warning("eval: a batch of %d images left unscored: the reward failed after %d attempts (%s)",
                        len(metas), report.attempts, report.error)
        return out

    guarded.last_error = ""
    return guarded


def per_category(metas: list[dict], k: int) -> list[dict]:
    """``k`` prompts of each category, evenly spread over its prompts in split order (a balanced,
    cheaper eval set that still covers every part of the category)."""
    by_tag: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(metas):
        by_tag[m.get("tag", "")].append(i)
    keep = set()
    for idx in by_tag.values():
        n = len(idx)
        keep.update(idx if n <= k else [idx[(j * n) // k] for j in range(k)])
    return [m for i, m in enumerate(metas) if i in keep]


def _by_category(by_tag: dict[str, list]) -> dict[str, float]:
    """{"overall": mean of the category means, category: mean} (GenEval's summary)."""
    cats = {t: float(np.mean(by_tag[t])) for t in (*CATEGORIES, *VIDEO_CATEGORIES, *EDIT_CATEGORIES) if t in by_tag}
    cats.update({t: float(np.mean(v)) for t, v in by_tag.items() if t not in cats})
    return {"overall": float(np.mean(list(cats.values()))) if cats else 0.0, **cats}


def pass_at_n(rows: list[dict], n: int) -> dict[str, float]:
    """pass@n per category and overall: the share of prompts with at least one strictly correct
    image among their first ``n`` samples (the headroom a group of n gives a group-relative method)."""
    hit: dict[tuple[str, int], bool] = {}
    for r in rows:
        if r["sample"] < n:
            key = (r["tag"], r["index"])
            hit[key] = hit.get(key, False) or bool(r["correct"] >= 1)
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for (tag, _), ok in hit.items():
        by_tag[tag].append(ok)
    return {"n": n, **_by_category(by_tag)}


def summarize(rows: list[dict], images_per_prompt: int = 1) -> dict:
    """Strict accuracy by category (pass@1 over every image), mean partial reward and its standard error
    (``reward_se``: the per-image scores' std / sqrt(n)), quality signals; with ``images_per_prompt`` > 1
    also ``pass_at_n`` (a dict like the strict scores); with out-of-domain rewards in the rows,
    ``extra`` / ``extra_se``: {name: mean / standard error} over the images each scored (None: none
    scored), and ``extra_unscored``: {name: images left unscored} where any were."""
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        by_tag[r["tag"]].append(r["correct"])
    extra = {"pass_at_n": pass_at_n(rows, images_per_prompt)} if images_per_prompt > 1 and rows else {}
    return {
        **_by_category(by_tag),
        **extra,
        "reward": float(np.mean([r["reward"] for r in rows])) if rows else 0.0,
        "reward_se": _se([r["reward"] for r in rows]),
        **{k: float(np.mean([r[k] for r in rows])) for k in ("sharpness", "off_palette") if rows and k in rows[0]},
        **{k: float(np.mean([r[k] for r in rows])) for k in (rows[0] if rows else ()) if k.startswith("reward_")},
        **_extra_summary(rows),
        "n_images": len(rows),
        "rows": rows,
    }


def _se(values: list) -> float | None:
    """The standard error of the mean of ``values`` (None with fewer than 2)."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None


def _extra_summary(rows: list[dict]) -> dict:
    """``extra``, ``extra_se`` and ``extra_unscored`` of the rows' out-of-domain scores."""
    names = list(dict.fromkeys(k for r in rows for k in r.get("extra", {})))
    if not names:
        return {}
    scores = {n: [r["extra"][n] for r in rows if r.get("extra", {}).get(n) is not None] for n in names}
    left = {n: len(rows) - len(v) for n, v in scores.items() if len(v) < len(rows)}
    return {"extra": {n: float(np.mean(v)) if v else None for n, v in scores.items()},
            "extra_se": {n: _se(v) for n, v in scores.items()}, **({"extra_unscored": left} if left else {})}


def markdown_table(results: dict[str, dict]) -> str:
    """One row per named result, columns overall + categories (strict accuracy); a missing eval's
    (its reward failed throughout: ``overall`` null) cells read "missing"."""
    known = (*CATEGORIES, *VIDEO_CATEGORIES, *EDIT_CATEGORIES)
    cols = ["overall", *[c for c in known if any(c in r for r in results.values())], "reward"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        cell = lambda v: "missing" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {name} | " + " | ".join(cell(r.get(c, float("nan"))) for c in cols) + " |")
        if "pass_at_n" in r:
            p = r["pass_at_n"]
            lines.append(f"| {name} pass@{p['n']} | " + " | ".join(
                f"{p[c]:.3f}" if c in p else "" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_eval(result: dict, out_dir: str | Path, name: str = "model") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "eval.md").write_text(markdown_table({name: result}))
