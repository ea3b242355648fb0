"""The `dgpo` command line's parser: every command, its arguments and their help (dgpo/cli.py runs them)."""

from __future__ import annotations

import argparse

from dgpo import __version__
from dgpo.cli_types import (
    SEED_MAX,
    Parser,
    channel_list,
    debug_flag,
    image_file,
    integer,
    leaf_parsers,
    number,
)
from dgpo.models.families import MODEL_KINDS


def _sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=integer(1, 1000), default=10, help="ODE steps (default 10)")
    p.add_argument("--cfg-scale", type=number(0, 100), default=4.5, help="CFG scale (default 4.5)")
    p.add_argument("--shift", type=number(0, 100), default=0.0, help="time shift (default 0: the model's own; toy 1, "
                                                                     "SD3 3)")
    p.add_argument("--method", choices=["dpm", "euler"], default="dpm")


def _export_and_bench_args(sub) -> None:
    ex = sub.add_parser("export", help="a run's LoRA for diffusers' load_lora_weights, or a merged model")
    ex.add_argument("run", help="run directory")
    ex.add_argument("--out", default="", help="output folder (default: RUN/export or RUN/merged)")
    ex.add_argument("--merge", action="store_true", help="merge into a full diffusers folder (toy: a toy folder)")
    ex.add_argument("--weights", choices=["ema_slow", "policy"], default="ema_slow",
                    help="the slow EMA (evaluated, default) or the raw policy weights")
    ex.add_argument("--checkpoint", default="", help="a checkpoint folder of the run (default: the latest)")

    be = sub.add_parser("bench", help="the paper's comparisons on the toy world (report.md + PNG + JSON)")
    be.add_argument("--quick", action="store_true", help="smoke suite: DGPO, Flow-GRPO, DPO; 1 seed; 60 s each")
    be.add_argument("--out", default="runs/bench", help="output folder (rerun to resume: finished runs are kept)")
    be.add_argument("--arms", default="", help="comma-separated arms (default: the suite; see --list for every arm)")
    be.add_argument("--seeds", type=integer(1, 1000), default=None, help="seeds per arm (default 3; quick 1)")
    be.add_argument("--budget-s", type=number(0, above=True), default=None, help="training seconds per run (default "
                                                                                 "360; quick 60; Flow-GRPO 3x)")
    be.add_argument("--eval-every-s", type=number(0, above=True), default=None, help="eval interval in training "
                                                                                     "seconds (default 30; quick 30)")
    be.add_argument("--eval-per-category", type=integer(1), default=None, help="eval prompts and at least as many "
                                                                               "images per category (40; quick 6)")
    be.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every arm (repeatable), e.g. --set train.batch_size=256 (not a key "
                    "the bench or a chosen arm sets); runs made with other overrides or on another device are rerun")
    be.add_argument("--report-only", action="store_true", help="rewrite the report from raw/ without running")
    be.add_argument("--list", action="store_true", help="list the arms and their overrides")


def _model_args(p: argparse.ArgumentParser, resolution: int) -> None:
    g = p.add_argument_group("model", "how --model is loaded (a diffusers folder or hub id; --lora also on a "
                             "toy model)")
    g.add_argument("--lora", default="", help="an exported LoRA (pytorch_lora_weights.safetensors or its folder)")
    g.add_argument("--kind", choices=["", *MODEL_KINDS], default="",
                   help="model family (default: read from model_index.json)")
    g.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="diffusers weights' dtype")
    g.add_argument("--resolution", type=integer(0, 16384), default=resolution,
                   help=f"diffusers models: image size (0: native; default {resolution or 'native'})")
    g.add_argument("--device", default="", help="default: cuda if available, else cpu")


def _video_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video models", "the frame count and frame size a video model (Wan) samples at; 0 "
                             "keeps the model's own (a run's, else the pipeline's 81 frames of 480 x 832)")
    g.add_argument("--frames", type=integer(0, 100_000), default=0,
                   help="frames per video (Wan: frames - 1 a multiple of 4, e.g. 33 or 81)")
    g.add_argument("--height", type=integer(0, 16384), default=0,
                   help="frame height in pixels (Wan: a multiple of 16, TI2V-5B 32); not with --resolution")
    g.add_argument("--width", type=integer(0, 16384), default=0, help="frame width in pixels (as --height)")


def _protocol_args(ev: argparse.ArgumentParser) -> None:
    g = ev.add_argument_group("paper protocols", "--protocol: sampler defaults 40 Euler steps, CFG 4.5, the "
                              "model's shift, 512 px (Flow-GRPO / DiffusionNFT evaluation)")
    g.add_argument("--protocol", choices=["geneval", "ocr", "pickscore", "drawbench"], default=None,
                   help="geneval: 553 prompts x 4, strict; ocr: 1,018; pickscore: 2,048; drawbench: 1,000 lines")
    g.add_argument("--max-prompts", type=integer(0), default=0, help="only the first N prompts (0: all)")
    g.add_argument("--detector", default="", help="geneval: Mask2Former folder or hub id")
    g.add_argument("--clip", default="", help="geneval: CLIP folder or hub id (colours)")
    g.add_argument("--partial", choices=["corrected", "official"], default="corrected",
                   help="geneval: partial-credit variant of the reward column")
    g.add_argument("--pickscore-model", default="", help="PickScore folder or hub id")
    g.add_argument("--pickscore-processor", default="", help="PickScore processor folder or hub id")
    g.add_argument("--aesthetic", default="", help="LAION aesthetic MLP weights (sac+logos+ava1-l14-linearMSE.pth); "
                   "--clip gives its CLIP ViT-L/14, as for clipscore")
    g.add_argument("--hps", default="", help="HPS_v2.1_compressed.pt (default: from the hub; needs dgpo[hps])")
    g.add_argument("--imagereward", default="", help="ImageReward.pt or a folder with it (default: from the hub)")
    g.add_argument("--judge-url", default="", help="unifiedreward: an OpenAI-compatible server's base URL, e.g. "
                   "http://127.0.0.1:17140/v1 (sglang serving UnifiedReward-7b-v1.5)")
    g.add_argument("--judge-model", default="UnifiedReward-7b-v1.5", help="unifiedreward: the served model's name")
    g.add_argument("--judge-token-env", default="", help="unifiedreward: environment variable holding the server's "
                   "API key (default: none)")
    g.add_argument("--rewards", default="", help="drawbench: comma-separated rewards (default: all available)")
    r = ev.add_argument_group("rewards (no --protocol)", "score with rewards instead of the toy GenEval scorer (an "
                              "edit prompt file needs them); the paths above are theirs")
    r.add_argument("--reward", default="", help="comma-separated reward names (built-in or package.module:function), "
                   "e.g. image_similarity, geneval,image_similarity, unifiedreward_edit")
    r.add_argument("--reward-weights", default="", help="comma-separated weights of --reward (default 1 each)")
    g.add_argument("--official-results", default="",
                   help="geneval: GenEval's results.jsonl on the images in --out; compare, generate nothing")


def _reward_args(sub) -> None:
    rw = sub.add_parser("reward", help="rewards as a service")
    rw_sub = rw.add_subparsers(dest="reward_cmd", required=True)
    sv = rw_sub.add_parser("serve", help="serve one reward over HTTP (JSON + PNG) for `reward.name: remote`",
                           description="The bearer token comes from $DGPO_REWARD_TOKEN or --token-file; without "
                           "one only a loopback address is served.")
    sv.add_argument("--reward", required=True,
                    help="reward name, e.g. aesthetic, clipscore, hpsv2, imagereward, pickscore, geneval; "
                    "video rewards (video_ocr, temporal_consistency) take videos")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback; others need a token)")
    sv.add_argument("--port", type=integer(0, 65535), default=8765)
    sv.add_argument("--token-file", default="", help="file holding the bearer token (else $DGPO_REWARD_TOKEN)")
    sv.add_argument("--device", default="", help="default: cuda if available, else cpu")
    for flag, key in (("--model-path", "model_path"), ("--processor-path", "processor_path"),
                      ("--clip-path", "clip_path"), ("--aesthetic-path", "aesthetic_path"), ("--hps-path", "hps_path"),
                      ("--imagereward-path", "imagereward_path")):
        sv.add_argument(flag, default="", help=f"as reward.{key}")
    sv.add_argument("--partial", choices=["corrected", "official"], default="corrected", help="as reward.partial")
    sv.add_argument("--batch-size", type=integer(1), default=32, help="images per scorer call (default 32)")
    sv.add_argument("--queue", type=integer(1), default=8, help="requests waiting for the GPU before 503 (default 8)")
    sv.add_argument("--timeout-s", type=number(0, above=True), default=600.0,
                    help="longest wait for the GPU before 504")
    sv.add_argument("--read-timeout-s", type=number(0, above=True), default=120.0, help="longest wait for a request's "
                                                                                        "body (408)")
    sv.add_argument("--max-body-mb", type=number(0, 1 << 20, above=True), default=256.0, help="largest request body "
                                                                                              "(413)")
    sv.add_argument("--max-items", type=integer(1), default=512, help="most images (or video frames) per request (413)")
    sv.add_argument("--max-pixels", type=integer(1), default=4096 * 4096, help="most pixels per image (400)")


def _toy_and_geneval_args(sub) -> None:
    toy = sub.add_parser("toy", help="the shapes toy world")
    toy_sub = toy.add_subparsers(dest="toy_cmd", required=True)
    pt = toy_sub.add_parser("pretrain", help="train the toy base model from scratch")
    pt.add_argument("--world", choices=["image", "video", "edit"], default="image",
                    help="image: the shapes UNet; video: the space-time model on moving shapes "
                         "(dgpo.toy.video_pretrain); edit: the editing model on instructions and source images "
                         "(dgpo.toy.edit_pretrain)")
    pt.add_argument("--out", default="runs/toy-pretrain")
    pt.add_argument("--minutes", type=number(0, above=True), default=60.0)
    pt.add_argument("--max-steps", type=integer(1), default=None)
    pt.add_argument("--batch-size", type=integer(1), default=None, help="images (default 64; edit: 64 edits) or clips "
                                                                        "(video: 16)")
    pt.add_argument("--lr", type=number(0, 1, above=True), default=1e-3)
    pt.add_argument("--seed", type=integer(0, SEED_MAX), default=0)
    pt.add_argument("--ema-decay", type=number(0, 1), default=0.999)
    pt.add_argument("--init", default=None, help="continue from a toy checkpoint folder; video / edit: 'image' "
                    "(default: the shipped image base's layers), 'scratch', or an image or video / edit checkpoint "
                    "folder")
    pt.add_argument("--weights", default="", help="category weights, e.g. single_object=4,colors=3")
    pt.add_argument("--pos-embed", action="store_true",
                    help="position embeddings on the attention tokens (added, zero-initialised, to an --init model)")
    pt.add_argument("--coords", action="store_true", help="coordinate input channels (a new model only)")
    pt.add_argument("--channels", type=channel_list, default=None, help="UNet widths of a new model, e.g. 16,32,64")
    pt.add_argument("--save-every", type=integer(1), default=250, help="snapshot and resumable state every N steps")
    pt.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    pt.add_argument("--t-mean", type=number(-20, 20), default=0.0,
                    help="location of the logit-normal timestep density (positive: more high-noise samples)")
    pp = toy_sub.add_parser("prompts", help="write a split as GenEval-format JSONL")
    pp.add_argument("split", choices=["train", "test"])
    pp.add_argument("--world", choices=["image", "video", "edit"], default="image",
                    help="video: the motion prompts; edit: the editing instructions with their scenes")
    pp.add_argument("--out", required=True)

    ge = sub.add_parser("geneval", help="GenEval's prompt sets")
    ge_sub = ge.add_subparsers(dest="geneval_cmd", required=True)
    gp = ge_sub.add_parser("prompts", help="write GenEval-style training prompts (default: the shipped file)")
    gp.add_argument("--out", required=True)
    gp.add_argument("--seed", type=integer(0, SEED_MAX), default=None, help="generator seed (default: the shipped "
                                                                            "file's)")
    gp.add_argument("--size", type=integer(1, 10_000_000), default=None, help="number of prompts (default: the shipped "
                                                                              "file's)")


def build_parser(description: str) -> argparse.ArgumentParser:
    ap = Parser(prog="dgpo", description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"dgpo {__version__}")
    debug_flag(ap, default=False)
    sub = ap.add_subparsers(dest="cmd", required=True)

    tr = sub.add_parser("train", help="DGPO training (no config: the toy-world default)")
    tr.add_argument("args", nargs="*", help="[config.yaml] [key=value ...]")
    tr.add_argument("--resume", action="store_true", help="continue the run in run.out_dir")
    tr.add_argument("--change-processes", action="store_true",
                    help="with --resume: continue a checkpoint written by another number of processes (same samples "
                    "and objective; float sums in another order, so not bit for bit; not for flow_grpo)")

    cf = sub.add_parser("config", help="config tools")
    cf.add_argument("action", choices=["show", "options"], help="show: resolved config; options: all keys")
    cf.add_argument("args", nargs="*", help="[config.yaml] [key=value ...]")

    sa = sub.add_parser("sample", help="write a PNG grid for prompts (a video model: MP4/GIF files and an "
                        "animated grid)")
    sa.add_argument("prompts", nargs="*", help="prompts (default: 16 held-out toy prompts)")
    sa.add_argument("--prompt-file", default="", help="a prompt file or set instead of prompts, e.g. an edit prompt "
                    "file for an editing model (JSON lines with 'prompt' and 'source'; the grid shows each source "
                    "before its results)")
    sa.add_argument("--model", default="",
                    help="run dir, toy checkpoint folder, diffusers folder or hub id (default: the built-in toy base)")
    sa.add_argument("--out", type=image_file, default="samples.png",
                    help="the grid's file (.png, .jpg, .webp), or an existing folder for FOLDER/samples.png; a video "
                    "model also writes OUT_STEM.mp4 / .gif (the animated grid) and OUT_STEM/ (each video)")
    sa.add_argument("--n", type=integer(1, 4096), default=4, help="images per prompt")
    sa.add_argument("--seed", type=integer(0, SEED_MAX), default=0)
    sa.add_argument("--batch-size", type=integer(1), default=8, help="images generated at once")
    sa.add_argument("--fps", type=number(0, 240, above=True), default=8.0,
                    help="video models: frames per second of the MP4 / GIF files (default 8, as Flow-GRPO's Wan logs)")
    _sampler_args(sa)
    _model_args(sa, resolution=0)
    _video_args(sa)

    ev = sub.add_parser("eval", help="GenEval-style eval (toy), or a paper protocol: eval.json + eval.md")
    ev.add_argument("--model", default="",
                    help="run dir, toy checkpoint folder, diffusers folder or hub id, or 'oracle' (the toy renderer)")
    ev.add_argument("--split", default="toy:test", help="toy:test, toy:train, geneval:test, a GenEval .jsonl or a .txt "
                    "(no --protocol)")
    ev.add_argument("--images-per-prompt", type=integer(1, 4096), default=None, help="default 1; with --protocol the "
                                                                                     "protocol's")
    ev.add_argument("--min-per-category", type=integer(0), default=40,
                    help="small categories get more images per prompt, to at least this many images (no --protocol)")
    ev.add_argument("--out", default="eval")
    ev.add_argument("--seed", type=integer(0, SEED_MAX), default=0)
    ev.add_argument("--batch-size", type=integer(1), default=None, help="default 64; with --protocol 8")
    _sampler_args(ev)
    ev.set_defaults(steps=None, shift=None, method=None)
    _model_args(ev, resolution=512)
    _protocol_args(ev)

    _export_and_bench_args(sub)

    _toy_and_geneval_args(sub)
    _reward_args(sub)
    for p in leaf_parsers(ap):
        if p is not ap:
            debug_flag(p)  # `dgpo train ... --debug` as well as `dgpo --debug train ...`
    return ap
