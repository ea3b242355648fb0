"""`dgpo` command line: train, config show/options, sample, eval, export, bench, toy pretrain/prompts,
geneval prompts, reward serve. No logic lives here.

A mistake in the input (a :class:`~dgpo.errors.UserError`, a bad command line, or the file system refusing
a path: an ``OSError`` that names a file) ends with one line on stderr, ``dgpo CMD: error: ...``, and exit
status 2; ``--debug`` adds the traceback. Any other exception is a bug in dgpo and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from dgpo.cli_parser import build_parser
from dgpo.errors import InputError, MissingPathError, UserError, one_line, user_path
from dgpo.training import PeerLost, RunHalted

DESCRIPTION = """Online RL post-training of text-to-image flow models: DGPO, Flow-GRPO, online DPO and
DiffusionNFT on the built-in toy world (the default) or SD3/3.5, FLUX.1, Sana and Qwen-Image through
diffusers.

  dgpo train [config.yaml] [key=value ...] [--resume]   train (no config: the toy demo)
  dgpo config show|options                              the resolved config; every key
  dgpo sample / eval / export                           images, scores, a LoRA or merged model
  dgpo bench                                            the paper's comparisons on the toy world
  dgpo toy / geneval / reward                           toy base and prompts, GenEval prompts, a reward server

A mistake in the input ends with one line, "dgpo CMD: error: ...", and exit status 2 (--debug: the
traceback too)."""


def _split_cfg_args(args: list[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _load_flow_model(a):
    """``--model``: a toy checkpoint folder, a run dir (its slow-EMA weights), a diffusers folder or hub
    id, or '' for the built-in base; with ``--lora``, ``--kind``, ``--dtype``, ``--resolution``, on
    ``--device`` (default: cuda if available)."""
    import torch

    from dgpo.training.export import load_any

    model = load_any(a.model, a.lora, a.kind, a.dtype, a.resolution)
    return model.to(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _say_why_on_sigterm() -> None:
    """One line on stderr when a launcher or scheduler stops the run (SIGTERM: torchrun and accelerate stop
    every process when one fails; a preemption); the process still ends by the signal."""
    import signal

    def handler(signum, frame):
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")
        who = f"process {rank} of {world}" if rank is not None and world != "1" else "the run"
        print(f"dgpo train: stopped: {who} got SIGTERM (a launcher stops every process when one fails; or a "
              "preemption); the newest complete checkpoint is kept: relaunch with --resume", file=sys.stderr,
              flush=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


def cmd_train(a) -> None:
    from dgpo.config import load_config
    from dgpo.evaluation import markdown_table
    from dgpo.training import checkpoints, ood
    from dgpo.training.trainer import Trainer

    path, overrides = _split_cfg_args(a.args)
    cfg = load_config(path, overrides)
    checkpoints.check_run_dir(Path(cfg.run.out_dir), a.resume)
    from dgpo.training.distributed import peers_watched

    _say_why_on_sigterm()
    with peers_watched():  # another process died: one line, not a collective's traceback
        summary = Trainer(cfg, resume=a.resume, change_processes=a.change_processes).fit()
    name = {"dgpo": "DGPO", "flow_grpo": "Flow-GRPO", "dpo": "DPO", "nft": "DiffusionNFT"}[cfg.train.algorithm]
    hacking = ood.hacking_line(summary)  # out-of-domain rewards: one line, the reward-hacking verdict
    if "eval_after" not in summary:
        print(f"{name}: {summary['steps']} optimizer steps; run directory: {cfg.run.out_dir}")
        if hacking:
            print(hacking)
        return
    before = {k: v for k, v in summary["eval_before"].items() if k != "step"}
    after = {k: v for k, v in summary["eval_after"].items() if k != "step"}
    print(f"\n{name}: {summary['steps']} optimizer steps; held-out toy GenEval (strict, slow-EMA weights):")
    print(markdown_table({"base (before)": before, f"{name} (after)": after}))
    if hacking:
        print(hacking)
    print(f"run directory: {cfg.run.out_dir} (summary.json, metrics.jsonl, samples/, plots/, tb/)")


def cmd_config(a) -> None:
    from dgpo.config import dump_yaml, load_config
    from dgpo.config.docs import options_markdown

    if a.action == "options":
        print(options_markdown(), end="")
        return
    path, overrides = _split_cfg_args(a.args)
    print(dump_yaml(load_config(path, overrides)), end="")


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


def cmd_export(a) -> None:
    from dgpo.training.export import export_run

    out = a.out or str(Path(a.run) / ("merged" if a.merge else "export"))
    path = export_run(a.run, out, merge=a.merge, weights=a.weights, checkpoint=a.checkpoint or None)
    print(f"wrote {path}")


def cmd_bench(a) -> None:
    from dataclasses import replace

    from dgpo import bench

    if a.list:
        for name, ov in bench.ARMS.items():
            extra = "" if name in bench.SUITE_ARMS else "  [not in the default suite: --arms]"
            print(f"{name:14s} {' '.join(ov) or '(the toy default)'}{extra}")
        return
    spec = bench.quick_spec(Path(a.out)) if a.quick else bench.default_spec(Path(a.out))
    if a.arms:
        spec = replace(spec, arms=[x.strip() for x in a.arms.split(",") if x.strip()])
    if a.seeds is not None:
        spec = replace(spec, seeds=list(range(a.seeds)))
    if a.set:
        spec = replace(spec, extra=tuple(a.set))
    for field, value in (("budget_s", a.budget_s), ("eval_every_s", a.eval_every_s),
                         ("eval_per_category", a.eval_per_category)):
        if value is not None:
            spec = replace(spec, **{field: value})
    if a.report_only:
        bench.check_extra(spec)
        path = bench.write_report(spec, bench.load_results(spec.out / "raw"))
    else:
        bench.run_suite(spec)
        path = spec.out / "report.md"
    print(path.read_text())
    print(f"wrote {path}")


def cmd_toy(a) -> None:
    if a.toy_cmd == "prompts":
        from dgpo.toy import edit_grammar, grammar, video_grammar

        rows = {"video": video_grammar, "edit": edit_grammar}.get(a.world, grammar).split(a.split)
        grammar.write_jsonl(rows, a.out)
        print(f"wrote {len(rows)} prompts to {a.out}")
        return
    if a.world != "image":
        return _pretrain_world(a)
    from dgpo.toy.model import ToyModelConfig
    from dgpo.toy.pretrain import parse_category_weights, pretrain

    weights = parse_category_weights(a.weights)
    if a.init and (a.coords or a.channels):
        raise InputError("--coords and --channels shape a new model; an --init model keeps its architecture")
    cfg = ToyModelConfig(channels=a.channels or ToyModelConfig.channels, coords=a.coords)
    last = pretrain(a.out, cfg=cfg, init=a.init, weights=weights or None, pos_embed=a.pos_embed,
                    **_loop_options(a, 64))
    print(f"final EMA weights: {last}")


def _loop_options(a, batch_size: int) -> dict:
    """The shared pretraining loop's settings (dgpo.toy.pretrain_loop.LoopOptions) from the flags."""
    return dict(minutes=a.minutes, batch_size=a.batch_size or batch_size, lr=a.lr, ema_decay=a.ema_decay,
                save_every=a.save_every, seed=a.seed, max_steps=a.max_steps, t_mean=a.t_mean, resume=a.resume)


def _pretrain_world(a) -> None:
    """`dgpo toy pretrain --world video|edit`: the toy video base (dgpo.toy.video_pretrain) or the toy
    editing base (dgpo.toy.edit_pretrain), both started from the shipped image base by default."""
    if a.coords or a.channels or a.pos_embed:
        raise InputError(f"--coords, --channels and --pos-embed shape the image model; the {a.world} model takes "
                         "its spatial layers' architecture from its --init (default: the shipped image base)")
    if a.world == "video":
        from dgpo.toy.video_pretrain import parse_video_weights, pretrain_video

        last = pretrain_video(a.out, init=a.init or "image", weights=parse_video_weights(a.weights) or None,
                              **_loop_options(a, 16))
    else:
        from dgpo.toy.edit_pretrain import parse_edit_weights, pretrain_edit

        last = pretrain_edit(a.out, init=a.init or "image", weights=parse_edit_weights(a.weights) or None,
                             **_loop_options(a, 64))
    print(f"final EMA weights: {last}")


def cmd_geneval(a) -> None:
    from dgpo.data.geneval import DEFAULT_SEED, DEFAULT_SIZE, make_train_prompts, write_jsonl

    rows = make_train_prompts(DEFAULT_SEED if a.seed is None else a.seed, DEFAULT_SIZE if a.size is None else a.size)
    write_jsonl(rows, a.out)
    print(f"wrote {len(rows)} prompts to {a.out}")


def _read_token(path: str) -> str:
    from dgpo.toy.grammar import read_utf8

    p = user_path(path, "--token-file")
    if not p.is_file():
        raise MissingPathError(f"--token-file {path!r}: no such file; write the token into it or set "
                               "$DGPO_REWARD_TOKEN")
    return read_utf8(p).strip()


def cmd_reward(a) -> None:
    import os

    import torch

    from dgpo.rewards import build_reward
    from dgpo.rewards.server import RewardServer, check_bind
    from dgpo.rewards.wire import Limits

    if a.reward in ("remote", "unifiedreward"):
        raise InputError(f"--reward {a.reward}: a server cannot serve another server; name the scorer (the "
                         "unifiedreward judge's own server is what reward.judge_url points at)")
    token = _read_token(a.token_file) if a.token_file else os.environ.get("DGPO_REWARD_TOKEN", "")
    check_bind(a.host, token)  # before the scorer spends minutes loading
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    fn = build_reward(a.reward, a.model_path, a.processor_path, device, clip_path=a.clip_path,
                      partial=a.partial, aesthetic_path=a.aesthetic_path, hps_path=a.hps_path,
                      imagereward_path=a.imagereward_path, key="--reward")
    limits = Limits(int(a.max_body_mb * (1 << 20)), a.max_items, a.max_pixels)
    server = RewardServer(fn, a.reward, a.host, a.port, token, limits, a.batch_size, a.queue, a.timeout_s,
                          a.read_timeout_s, device=device)
    print(f"serving reward {a.reward!r} on {server.url} ({'token required' if token else 'no token: loopback only'});"
          f" train with reward.name=remote reward.url={server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 2 (one line on stderr) for a mistake in the input. Our bugs raise."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a = build_parser(DESCRIPTION).parse_args(argv)
    handlers = {"train": cmd_train, "config": cmd_config, "sample": cmd_sample, "eval": cmd_eval,
                "bench": cmd_bench, "export": cmd_export, "toy": cmd_toy,
                "geneval": cmd_geneval, "reward": cmd_reward}
    try:
        handlers[a.cmd](a)
    except PeerLost as e:  # not the input's fault: its own exit status, for launchers and scripts
        sys.stdout.flush()
        print(f"dgpo {a.cmd}: stopped: {one_line(str(e))}", file=sys.stderr)
        return 3
    except (UserError, OSError, RunHalted) as e:
        if isinstance(e, OSError) and not isinstance(e, UserError) and e.filename is None:
            raise  # an OSError on no path (a socket, a library's internals) is not the user's to fix
        if a.debug:
            import traceback

            traceback.print_exc()
        sys.stdout.flush()
        print(f"dgpo {a.cmd}: error: {one_line(_message(e))}", file=sys.stderr)
        return 2
    return 0


def _message(e: Exception) -> str:
    """A UserError's message; for the file system's refusal on a path (permission denied, no such folder,
    disk full), what it refused and where."""
    if isinstance(e, UserError) or not isinstance(e, OSError):
        return str(e)
    where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    return f"{where}: {e.strerror or e}; check the path and its permissions"


if __name__ == "__main__":
    sys.exit(main())
