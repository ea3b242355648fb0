"""The papers' evaluation protocols (``dgpo eval --protocol``): fixed prompt sets, images per prompt
and scorers, with every image kept on disk in GenEval's folder layout.

* ``geneval``: GenEval's 553 official prompts x 4 images, strict correctness by GenEval's rules
  (Mask2Former + CLIP), accuracy per category, ``overall`` = the mean of the six categories.
* ``ocr``: Flow-GRPO's 1,018 OCR test prompts, one image each, the OCR reward (its mean is the
  OCR accuracy the papers report).
* ``pickscore``: Flow-GRPO's 2,048 PickScore test prompts, one image each, PickScore.
* ``drawbench``: DrawBench's 1,000 lines (200 prompts x 5), one image each, scored by every
  general-purpose reward dgpo has (those that fail to load, e.g. without their weights, are listed
  as skipped).

Layout of ``out``: ``<index:05d>/metadata.jsonl`` (the prompt's metadata, one JSON object) and
``<index:05d>/samples/<k:05d>.png`` per prompt, as GenEval's ``generation/diffusers_generate.py``
writes them, so that GenEval's ``evaluation/evaluate_images.py`` runs on the same images; plus
``eval.json`` (summary, settings and one row per image), ``eval.md`` and ``grid.png``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from dgpo.errors import InputError

log = logging.getLogger(__name__)

# general-purpose rewards (no per-prompt metadata) that score DrawBench
DRAWBENCH_REWARDS = ("pickscore", "clipscore", "aesthetic", "hpsv2", "imagereward", "unifiedreward",
                     "colorfulness", "jpeg_compressibility")


@dataclass(frozen=True)
class Protocol:
    prompts: str  # a shipped prompt set (dgpo.data.prompts.load_prompts)
    images_per_prompt: int
    rewards: tuple[str, ...]


PROTOCOLS = {
    "geneval": Protocol("geneval:test", 4, ("geneval",)),
    "ocr": Protocol("ocr:test", 1, ("ocr",)),
    "pickscore": Protocol("pickscore:test", 1, ("pickscore",)),
    "drawbench": Protocol("drawbench:test", 1, DRAWBENCH_REWARDS),
}


@dataclass
class RewardPaths:
    """Weights of the scorers (folders or hub ids; '' = the official ones) and the device they run on."""

    detector: str = ""
    clip: str = ""
    pickscore_model: str = ""
    pickscore_processor: str = ""
    partial: str = "corrected"  # geneval: the partial-credit variant of the ``reward`` column
    device: str = "cpu"
    aesthetic: str = ""  # the LAION aesthetic MLP weights (no default: the aesthetic reward is skipped without)
    hps: str = ""  # HPS_v2.1_compressed.pt ('' = from the hub)
    imagereward: str = ""  # ImageReward.pt or a folder with it ('' = from the hub)
    judge_url: str = ""  # unifiedreward: the OpenAI-compatible API's base URL (no default: skipped without)
    judge_model: str = "UnifiedReward-7b-v1.5"
    judge_token_env: str = ""  # the environment variable holding the judge server's API key ('' = none)


@dataclass
class EvalSettings:
    steps: int = 40
    cfg_scale: float = 4.5
    shift: float = 0.0  # 0: the model's own
    method: str = "euler"
    seed: int = 0
    batch_size: int = 8
    images_per_prompt: int = 0  # 0: the protocol's
    max_prompts: int = 0  # 0: all
    rewards: tuple[str, ...] = field(default_factory=tuple)  # drawbench: () = all available


def protocol_prompts(name: str, max_prompts: int = 0) -> list[dict]:
    """The prompt set of a protocol as metadata rows (GenEval's metadata, or {"prompt": ...})."""
    if name not in PROTOCOLS:
        raise InputError(f"--protocol {name!r}: allowed {sorted(PROTOCOLS)}")
    from dgpo.data.prompts import load_prompts

    rows = load_prompts(PROTOCOLS[name].prompts)
    return rows[:max_prompts] if max_prompts else rows


def build_scorers(name: str, rewards: tuple[str, ...], paths: RewardPaths) -> tuple[dict, dict]:
    """({reward name: callable}, {skipped name: reason}). Only DrawBench's default list skips rewards
    that cannot be loaded; a reward a protocol needs, or one asked for by name, must load."""
    from dgpo.rewards import build_reward

    names = rewards or PROTOCOLS[name].rewards
    optional = name == "drawbench" and not rewards
    scorers, skipped = {}, {}
    judge_token = os.environ.get(paths.judge_token_env, "") if paths.judge_token_env else ""
    for r in names:
        model, proc = (paths.detector, "") if r == "geneval" else (paths.pickscore_model, paths.pickscore_processor)
        try:
            scorers[r] = build_reward(r, model, proc, paths.device, clip_path=paths.clip, partial=paths.partial,
                                      aesthetic_path=paths.aesthetic, hps_path=paths.hps,
                                      imagereward_path=paths.imagereward, paper_units=True,
                                      judge={"url": paths.judge_url, "model": paths.judge_model, "token": judge_token},
                                      key="--rewards")
        except (ValueError, OSError, ImportError) as e:
            if not optional:
                if isinstance(e, ImportError):
                    raise InputError(f"reward {r!r}: {e}") from None  # names the pip extra
                raise
            skipped[r] = str(e).splitlines()[0][:300]
            log.warning("drawbench: reward %s skipped: %s", r, skipped[r])
    if not scorers:
        raise InputError(f"--protocol {name}: no reward could be loaded ({skipped})")
    return scorers, skipped


def score_batch(scorers: dict, images: torch.Tensor, metas: list[dict]) -> list[dict]:
    """Per image: GenEval's ``correct``/``reward``/``reason``, or one value per reward."""
    cols: dict[str, list] = {}
    for r, fn in scorers.items():
        if r == "geneval":
            verdicts = fn.verdicts(images, metas)
            cols["correct"] = [v.correct for v in verdicts]
            cols["reward"] = [v.reward for v in verdicts]
            cols["reason"] = [v.reason for v in verdicts]
        else:
            cols[r] = fn(images, metas).float().cpu().tolist()
    return [{k: v[i] for k, v in cols.items()} for i in range(len(images))]


def save_sample(out: Path, index: int, k: int, meta: dict, pixels: np.ndarray) -> str:
    """GenEval's layout: ``<index>/metadata.jsonl`` (one JSON object) and ``<index>/samples/<k>.png``."""
    folder = out / f"{index:05d}"
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    if not (folder / "metadata.jsonl").is_file():
        (folder / "metadata.jsonl").write_text(json.dumps(meta))
    path = folder / "samples" / f"{k:05d}.png"
    Image.fromarray(pixels).save(path)
    return str(path.relative_to(out))


def run_protocol(name: str, image_fn: Callable, out: str | Path, settings: EvalSettings,
                 paths: RewardPaths) -> dict:
    """Generate, save and score a protocol's images; write eval.json, eval.md, grid.png; the result."""
    out = Path(out)
    metas = protocol_prompts(name, settings.max_prompts)
    per = settings.images_per_prompt or PROTOCOLS[name].images_per_prompt
    scorers, skipped = build_scorers(name, settings.rewards, paths)
    jobs = [(i, k) for i in range(len(metas)) for k in range(per)]
    rows, grid = [], []
    with tqdm(total=len(jobs), desc=f"eval {name}", unit="img") as bar:
        for start in range(0, len(jobs), settings.batch_size):
            chunk = jobs[start : start + settings.batch_size]
            batch = [metas[i] for i, _ in chunk]
            images = image_fn(batch, [settings.seed * 1_000_003 + i * 10_007 + k for i, k in chunk])
            pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()  # what the PNGs hold
            scored = score_batch(scorers, pixels.float() / 255, batch)
            for (i, k), meta, px, s in zip(chunk, batch, pixels.permute(0, 2, 3, 1).numpy(), scored):
                rows.append({"index": i, "sample": k, "tag": meta.get("tag", name), "prompt": meta["prompt"],
                             "file": save_sample(out, i, k, meta, px), **s})
            if len(grid) < 32:
                grid.extend(pixels[: 32 - len(grid)])
            bar.update(len(chunk))
    result = {"protocol": name, **summarize(name, rows, list(scorers)), "skipped_rewards": skipped,
              "images_per_prompt": per, "n_prompts": len(metas), "rows": rows}
    write_grid(torch.stack(grid).float() / 255, [r["prompt"] for r in rows[: len(grid)]], out / "grid.png")
    return result


def summarize(name: str, rows: list[dict], rewards: list[str]) -> dict:
    if name == "geneval":
        from dgpo.rewards.geneval.rules import summarize as geneval_summary

        return geneval_summary(rows)
    means = {r: float(np.mean([row[r] for row in rows])) for r in rewards}
    return {**({"overall": means[rewards[0]]} if len(rewards) == 1 else {}), **means, "n_images": len(rows)}


def write_grid(images: torch.Tensor, captions: list[str], path: Path, cell: int = 128) -> None:
    """A captioned grid of the first images, each scaled to ``cell`` pixels."""
    from dgpo.training.plots import save_grid

    small = F.interpolate(images, size=(cell, cell), mode="bilinear", antialias=True, align_corners=False)
    save_grid(small.clamp(0, 1), captions, path, cols=8, scale=1)


def markdown(result: dict, model: str) -> str:
    """eval.md: the summary table (GenEval: overall and categories; else one column per reward)."""
    skip = {"protocol", "rows", "skipped_rewards", "images_per_prompt", "n_prompts", "n_images", "settings"}
    cols = [k for k, v in result.items() if k not in skip and isinstance(v, float)]
    lines = [f"# {result['protocol']} ({result['n_images']} images, {result['n_prompts']} prompts)", "",
             "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|",
             f"| {model} | " + " | ".join(f"{result[c]:.4f}" for c in cols) + " |"]
    for r, why in result.get("skipped_rewards", {}).items():
        lines.append(f"\nskipped reward `{r}`: {why}")
    return "\n".join(lines) + "\n"


def evaluate_model(name: str, model: str, out: str | Path, settings: EvalSettings, paths: RewardPaths,
                   lora: str = "", kind: str = "", dtype: str = "fp32", resolution: int = 512) -> dict:
    """Load a model (run dir, toy folder, diffusers folder or hub id; optional LoRA), run a protocol on
    it, write the results into ``out``. ``resolution`` applies to diffusers models (0: native)."""
    from dataclasses import asdict

    from dgpo.evaluation import model_image_fn
    from dgpo.training.export import load_any

    flow = load_any(model, lora, kind, dtype, resolution).to(paths.device)
    shift = settings.shift or flow.default_shift()
    image_fn = model_image_fn(flow, settings.steps, shift, settings.cfg_scale, settings.method)
    result = run_protocol(name, image_fn, out, settings, paths)
    result["settings"] = {**asdict(settings), "model": model or "toy base", "lora": lora, "dtype": dtype,
                          "shift": shift, "resolution": getattr(flow, "resolution", None),
                          "reward_weights": {k: v for k, v in asdict(paths).items() if k != "device"}}
    label = model or "toy base"
    write_result(result, out, label + (f" + {lora}" if lora else ""))
    return result


def write_result(result: dict, out: str | Path, model: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "eval.md").write_text(markdown(result, model))


def compare_official(out: str | Path, official: str | Path) -> dict:
    """Our GenEval verdicts in ``out/eval.json`` beside the official evaluator's ``results.jsonl`` on the
    same image files: both summaries and the per-image agreement per category; writes compare.md."""
    from dgpo.rewards.geneval.rules import summarize as geneval_summary

    out, official = Path(out), Path(official)
    ours = json.loads((out / "eval.json").read_text()) if (out / "eval.json").is_file() else {}
    if ours.get("protocol") != "geneval":
        raise InputError(f"{out / 'eval.json'}: not the output of `dgpo eval --protocol geneval`")
    by_file = {r["file"]: r for r in ours["rows"]}
    pairs = []
    for n, line in enumerate(official.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                row = None
            if not isinstance(row, dict) or not {"filename", "tag", "correct"} <= set(row):
                raise InputError(f"{official}:{n}: not a row of GenEval's results.jsonl")
            mine = by_file.get("/".join(Path(row["filename"]).parts[-3:]))  # <index>/samples/<k>.png
            if mine is not None:
                pairs.append((mine, row))
    if not pairs:
        raise InputError(f"{official}: no image in common with {out} (run the evaluator on that folder)")
    tags = list(dict.fromkeys(r["tag"] for r, _ in pairs))
    agree = {t: float(np.mean([a["correct"] == bool(b["correct"]) for a, b in pairs if a["tag"] == t])) for t in tags}
    result = {"n_images": len(pairs), "dgpo": geneval_summary([a for a, _ in pairs]),
              "official": geneval_summary([{**b, "correct": bool(b["correct"])} for _, b in pairs]),
              "agreement": {"overall": float(np.mean([a["correct"] == bool(b["correct"]) for a, b in pairs])), **agree}}
    cols = ["overall", *tags]
    lines = [f"# GenEval: dgpo (transformers) vs the official evaluator ({len(pairs)} images)", "",
             "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in ("dgpo", "official", "agreement"):
        lines.append(f"| {name} | " + " | ".join(f"{result[name].get(c, float('nan')):.4f}" for c in cols) + " |")
    (out / "compare.md").write_text("\n".join(lines) + "\n\nagreement: share of images with the same verdict\n")
    return result
