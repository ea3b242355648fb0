"""``dgpo sample`` and ``dgpo eval``: the commands that generate images and videos from a model (the toy,
a diffusers folder or hub id, a run directory, an exported LoRA), with edit prompts' source images."""

from __future__ import annotations

import os
from pathlib import Path

from dgpo.errors import InputError


def _load_flow_model(a):
    """``--model``: a toy checkpoint folder, a run dir (its slow-EMA weights), a diffusers folder or hub
    id, or '' for the built-in base; with ``--lora``, ``--kind``, ``--dtype``, ``--resolution``, on
    ``--device`` (default: cuda if available)."""
    import torch

    from dgpo.training.export import load_any

    model = load_any(a.model, a.lora, a.kind, a.dtype, a.resolution)
    return model.to(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def cmd_sample(a) -> None:
    import torch

    from dgpo.evaluation import model_image_fn
    from dgpo.rewards.modality import modality_of
    from dgpo.toy.grammar import split

    _check_size_flags(a)  # before the minutes a large model takes to load
    model = _load_flow_model(a)
    _apply_sizes(model, a)
    metas = _sample_metas(a) or split("test")[::20][:16]
    rows = [m for m in metas for _ in range(a.n)]
    fn = model_image_fn(model, a.steps, a.shift or model.default_shift(), a.cfg_scale, a.method)
    seeds = [a.seed + i for i in range(len(rows))]
    images = torch.cat([fn(rows[i : i + a.batch_size], seeds[i : i + a.batch_size]).cpu()
                        for i in range(0, len(rows), a.batch_size)])
    if modality_of(model) == "video":
        return _write_videos(images, rows, Path(a.out), a.n, a.fps)
    from dgpo.training.plots import save_grid

    captions, cols = [m["prompt"] for m in rows], max(a.n, 4)
    if any("source_images" in m for m in metas):  # edits: each row's first source image, then its results
        images, captions, cols = _with_sources(images, metas, a.n)
    save_grid(images, captions, Path(a.out), cols=cols)
    print(f"wrote {a.out} ({len(rows)} images)")


def _sample_metas(a) -> list[dict]:
    """`dgpo sample`'s rows: the prompts given, or the rows of --prompt-file (an edit prompt file: instructions
    with their source images)."""
    if a.prompt_file and a.prompts:
        raise InputError("give prompts or --prompt-file, not both")
    if a.prompt_file:
        from dgpo.data.prompts import load_prompts

        return load_prompts(a.prompt_file)
    return [{"prompt": p} for p in a.prompts]


def _with_sources(images, metas: list[dict], n: int):
    """Grid tiles: each row's first source image (resized to the results' size) before its ``n`` results."""
    import torch
    import torch.nn.functional as F

    from dgpo.data.edits import load_source

    tiles, captions = [], []
    for i, m in enumerate(metas):
        src = load_source(m["source_images"][0])[None]
        tiles += [F.interpolate(src, size=images.shape[-2:], mode="bilinear", antialias=True)[0].clamp(0, 1),
                  *images[i * n : (i + 1) * n]]
        captions += [f"source: {m['prompt']}", *[m["prompt"]] * n]
    return torch.stack(tiles), captions, n + 1


VIDEO_FLAGS = ("--frames", "--height", "--width")


def _check_size_flags(a) -> None:
    """`dgpo sample`'s video sizes against Wan's rules (config/rules.py), named by their flags."""
    from dgpo.config.rules import check_video_size

    if a.height and a.resolution:
        raise InputError("--height and --resolution both set the height; give one (--resolution: an image "
                         "model's size, or a video model's square frames)")
    check_video_size(a.frames, a.height, a.width, keys=VIDEO_FLAGS)


def _apply_sizes(model, a) -> None:
    """--resolution (also where loading did not read it: a run directory) and the video flags, checked
    against the loaded pipeline (TI2V-5B: sides multiples of 32); refused where the size is fixed (toy)."""
    from dgpo.rewards.modality import modality_of

    video = [f for f, v in zip(VIDEO_FLAGS, (a.frames, a.height, a.width)) if v]
    if not (a.resolution or video):
        return
    image = modality_of(model) != "video"
    if image and video:
        raise InputError(f"{', '.join(video)}: only video models read them; this model makes images (its size: "
                         "--resolution)")
    if not hasattr(model, "resolution"):
        fixed = " x ".join(map(str, model.latent_shape()[1:]))
        raise InputError(f"{', '.join(video or ['--resolution'])}: this toy model's size is fixed by its checkpoint "
                         f"({fixed} px)")
    if image:
        model.resolution = a.resolution
        return
    side = "--height" if a.height else "--resolution"  # --resolution alone: square frames, as model.resolution
    model.set_size(a.frames, a.height or a.resolution, a.width or a.resolution,
                   keys=("--frames", side, "--width" if a.width else side))


def _slug(text: str, limit: int = 40) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit].rstrip("_") or "video"


def _write_videos(videos, rows: list[dict], out: Path, n: int, fps: float) -> None:
    """A video model's samples [N, F, 3, H, W]: each video as OUT_STEM/PPP_S_prompt.mp4 (H.264, with the
    'video' extra) and .gif; the captioned grid as OUT_STEM.mp4 and OUT_STEM.gif; at OUT itself the
    animated grid (.webp) or a still of its middle frame (.png, .jpg)."""
    import importlib.util

    from dgpo.video_io import video_grid, write_gif, write_mp4, write_webp

    if videos.ndim != 5:
        raise InputError(f"dgpo sample: the video model's decode gave shape {list(videos.shape)}, not videos "
                         "[B, F, 3, H, W]")
    mp4 = importlib.util.find_spec("imageio_ffmpeg") is not None
    folder = out.with_suffix("")
    for i, (video, meta) in enumerate(zip(videos, rows)):
        name = f"{i // n:03d}_{i % n}_{_slug(meta['prompt'])}"
        if mp4:
            write_mp4(video, folder / f"{name}.mp4", fps)
        write_gif(video, folder / f"{name}.gif", fps)
    h, w = videos.shape[-2:]
    grid = video_grid(videos, [m["prompt"] for m in rows], cols=max(n, 4), scale=max(1, min(4, 256 // max(h, w))))
    written = [str(folder) + "/"]
    if mp4:
        written.append(str(write_mp4(grid, out.with_suffix(".mp4"), fps)))
    written.append(str(write_gif(grid, out.with_suffix(".gif"), fps)))
    if out.suffix.lower() == ".webp":
        write_webp(grid, out, fps)
    else:
        from PIL import Image

        out.parent.mkdir(parents=True, exist_ok=True)
        middle = (grid[len(grid) // 2].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(middle).save(out)
    written.append(str(out))
    note = "" if mp4 else " (no MP4s: pip install 'dgpo[video]' for H.264 files)"
    print(f"wrote {', '.join(written)} ({len(rows)} videos of {videos.shape[1]} frames){note}")


def cmd_eval(a) -> None:
    if a.protocol:
        return cmd_eval_protocol(a)
    from dgpo.data.prompts import load_prompts
    from dgpo.evaluation import (
        evaluate,
        markdown_table,
        model_image_fn,
        oracle_edit_fn,
        oracle_image_fn,
        oracle_video_fn,
        write_eval,
    )

    metas = load_prompts(a.split)
    video = any("motion" in m for m in metas)  # the toy video world's prompts (toy_video:test)
    edit = any("target_scene" in m for m in metas)  # the toy editing world's rows (toy_edit:test)
    if a.model == "oracle":
        oracle = oracle_video_fn() if video else oracle_edit_fn() if edit else oracle_image_fn()
        fn, name = oracle, "oracle (renderer)"
    else:
        model = _load_flow_model(a)
        fn = model_image_fn(model, a.steps or 10, a.shift or model.default_shift(), a.cfg_scale, a.method or "dpm")
        name = a.model or "toy base"
    score_fn = None
    if video:
        from dgpo.rewards.toy_video import ToyVideoReward

        score_fn = ToyVideoReward().eval_scores
    elif edit:
        from dgpo.rewards.toy_edit import ToyEditReward

        score_fn = ToyEditReward().eval_scores
    if a.reward or (not edit and any("source_images" in m for m in metas)):
        score_fn = _eval_reward(a)  # the named rewards (an edit prompt file's: image_similarity, geneval, ...)
    res = evaluate(fn, metas, a.images_per_prompt or 1, a.seed, a.batch_size or 64, "eval", a.min_per_category,
                   score_fn=score_fn)
    write_eval(res, a.out, name)
    print(markdown_table({name: res}), end="")
    print(f"wrote {a.out}/eval.json and {a.out}/eval.md ({res['n_images']} images)")


def _eval_reward(a):
    """--reward: ``evaluate``'s scorer, the weighted sum of the named rewards (--reward-weights; the strict
    correctness of the first that has one). An edit prompt file needs it: the toy GenEval scorer cannot tell
    an edit."""
    if not a.reward:
        raise InputError(f"--split {a.split}: an edit prompt file is scored by rewards: give --reward, e.g. "
                         "image_similarity, or geneval,image_similarity with --reward-weights 0.5,0.5")
    import torch

    from dgpo.rewards import build_reward
    from dgpo.rewards.multi import MultiReward

    names = [n.strip() for n in a.reward.split(",") if n.strip()]
    try:
        weights = [float(w) for w in a.reward_weights.split(",")] if a.reward_weights else [1.0] * len(names)
    except ValueError:
        raise InputError(f"--reward-weights {a.reward_weights!r}: comma-separated numbers") from None
    if len(weights) != len(names):
        raise InputError(f"--reward-weights: {len(weights)} weights for {len(names)} rewards (--reward)")
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    judge = {"url": a.judge_url, "model": a.judge_model,
             "token": os.environ.get(a.judge_token_env, "") if a.judge_token_env else ""}
    fns = {n: build_reward(n, a.pickscore_model if n == "pickscore" else a.detector, a.pickscore_processor, device,
                           clip_path=a.clip, partial=a.partial, aesthetic_path=a.aesthetic, hps_path=a.hps,
                           imagereward_path=a.imagereward, judge=judge, key="--reward") for n in names}
    return MultiReward(fns, dict(zip(names, weights))).eval_scores


def cmd_eval_protocol(a) -> None:
    import torch

    from dgpo.protocols import EvalSettings, RewardPaths, compare_official, evaluate_model

    if a.official_results:
        compare_official(a.out, a.official_results)
        print((Path(a.out) / "compare.md").read_text(), end="")
        return
    rewards = tuple(r.strip() for r in a.rewards.split(",") if r.strip())
    settings = EvalSettings(steps=a.steps or 40, cfg_scale=a.cfg_scale, shift=a.shift or 0.0,
                            method=a.method or "euler", seed=a.seed, batch_size=a.batch_size or 8,
                            images_per_prompt=a.images_per_prompt or 0, max_prompts=a.max_prompts, rewards=rewards)
    paths = RewardPaths(a.detector, a.clip, a.pickscore_model, a.pickscore_processor, a.partial,
                        a.device or ("cuda" if torch.cuda.is_available() else "cpu"), a.aesthetic, a.hps, a.imagereward,
                        a.judge_url, a.judge_model, a.judge_token_env)
    res = evaluate_model(a.protocol, a.model, a.out, settings, paths, a.lora, a.kind, a.dtype, a.resolution)
    print((Path(a.out) / "eval.md").read_text(), end="")
    print(f"wrote {a.out}/eval.json, eval.md, grid.png and {res['n_images']} images in GenEval's layout")
