"""`dgpo` command line: train, config show, sample, eval, toy pretrain/prompts, geneval prompts, reward
serve. No logic lives here.

A mistake in the input (a :class:`~dgpo.errors.UserError`, a bad command line, or the file system refusing
a path: an ``OSError`` that names a file) ends with one line on stderr, ``dgpo CMD: error: ...``, and exit
status 2; ``--debug`` adds the traceback. Any other exception is a bug in dgpo and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dgpo import __version__
from dgpo.cli_types import SEED_MAX, Parser, channel_list, debug_flag, integer, leaf_parsers, number
from dgpo.errors import InputError, MissingPathError, UserError, one_line, user_path
from dgpo.training import RunHalted


def _sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=integer(1, 1000), default=10, help="ODE steps (default 10)")
    p.add_argument("--cfg-scale", type=number(0, 100), default=4.5, help="CFG scale (default 4.5)")
    p.add_argument("--shift", type=number(0, 100), default=0.0, help="time shift (default 0: the model's own; toy 1, SD3 3)")
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
    be.add_argument("--arms", default="", help="comma-separated arms (default: all; see --list)")
    be.add_argument("--seeds", type=integer(1, 1000), default=None, help="seeds per arm (default 3; quick 1)")
    be.add_argument("--budget-s", type=number(0, above=True), default=None, help="training seconds per run (default 360; quick 60; Flow-GRPO 3x)")
    be.add_argument("--eval-every-s", type=number(0, above=True), default=None, help="eval interval in training seconds (default 30; quick 30)")
    be.add_argument("--eval-per-category", type=integer(1), default=None, help="eval prompts and at least as many images per category (40; quick 6)")
    be.add_argument("--report-only", action="store_true", help="rewrite the report from raw/ without running")
    be.add_argument("--list", action="store_true", help="list the arms and their overrides")


def _protocol_args(ev: argparse.ArgumentParser) -> None:
    g = ev.add_argument_group("paper protocols", "--protocol: sampler defaults 40 Euler steps, CFG 4.5, the "
                              "model's shift, 512 px (Flow-GRPO / DiffusionNFT evaluation)")
    g.add_argument("--protocol", choices=["geneval", "ocr", "pickscore", "drawbench"], default=None,
                   help="geneval: 553 prompts x 4, strict; ocr: 1,018; pickscore: 2,048; drawbench: 1,000 lines")
    g.add_argument("--lora", default="", help="an exported LoRA (pytorch_lora_weights.safetensors or its folder)")
    g.add_argument("--kind", choices=["", "toy", "sd3", "flux", "sana"], default="",
                   help="model family (default: read from model_index.json)")
    g.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="diffusers weights' dtype")
    g.add_argument("--resolution", type=integer(0, 16384), default=512, help="diffusers models: image size (0: native)")
    g.add_argument("--max-prompts", type=integer(0), default=0, help="only the first N prompts (0: all)")
    g.add_argument("--device", default="", help="default: cuda if available, else cpu")
    g.add_argument("--detector", default="", help="geneval: Mask2Former folder or hub id")
    g.add_argument("--clip", default="", help="geneval: CLIP folder or hub id (colours)")
    g.add_argument("--partial", choices=["corrected", "official"], default="corrected",
                   help="geneval: partial-credit variant of the reward column")
    g.add_argument("--pickscore-model", default="", help="PickScore folder or hub id")
    g.add_argument("--pickscore-processor", default="", help="PickScore processor folder or hub id")
    g.add_argument("--aesthetic", default="", help="LAION aesthetic MLP weights (sac+logos+ava1-l14-linearMSE.pth); "
                   "--clip gives its CLIP ViT-L/14, as for clipscore")
    g.add_argument("--hps", default="", help="HPS_v2.1_compressed.pt (default: from the hub; needs dgpo[hps])")
    g.add_argument("--rewards", default="", help="drawbench: comma-separated rewards (default: all available)")
    g.add_argument("--official-results", default="",
                   help="geneval: GenEval's results.jsonl on the images in --out; compare, generate nothing")


def _reward_args(sub) -> None:
    rw = sub.add_parser("reward", help="rewards as a service")
    rw_sub = rw.add_subparsers(dest="reward_cmd", required=True)
    sv = rw_sub.add_parser("serve", help="serve one reward over HTTP (JSON + PNG) for `reward.name: remote`",
                           description="The bearer token comes from $DGPO_REWARD_TOKEN or --token-file; without "
                           "one only a loopback address is served.")
    sv.add_argument("--reward", required=True, help="reward name, e.g. aesthetic, clipscore, hpsv2, pickscore, geneval")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback; others need a token)")
    sv.add_argument("--port", type=integer(0, 65535), default=8765)
    sv.add_argument("--token-file", default="", help="file holding the bearer token (else $DGPO_REWARD_TOKEN)")
    sv.add_argument("--device", default="", help="default: cuda if available, else cpu")
    for flag, key in (("--model-path", "model_path"), ("--processor-path", "processor_path"),
                      ("--clip-path", "clip_path"), ("--aesthetic-path", "aesthetic_path"), ("--hps-path", "hps_path")):
        sv.add_argument(flag, default="", help=f"as reward.{key}")
    sv.add_argument("--partial", choices=["corrected", "official"], default="corrected", help="as reward.partial")
    sv.add_argument("--batch-size", type=integer(1), default=32, help="images per scorer call (default 32)")
    sv.add_argument("--queue", type=integer(1), default=8, help="requests waiting for the GPU before 503 (default 8)")
    sv.add_argument("--timeout-s", type=number(0, above=True), default=600.0, help="longest wait for the GPU before 504")
    sv.add_argument("--read-timeout-s", type=number(0, above=True), default=120.0, help="longest wait for a request's body (408)")
    sv.add_argument("--max-body-mb", type=number(0, 1 << 20, above=True), default=256.0, help="largest request body (413)")
    sv.add_argument("--max-items", type=integer(1), default=512, help="most images per request (413)")
    sv.add_argument("--max-pixels", type=integer(1), default=4096 * 4096, help="most pixels per image (400)")


def _toy_and_geneval_args(sub) -> None:
    toy = sub.add_parser("toy", help="the shapes toy world")
    toy_sub = toy.add_subparsers(dest="toy_cmd", required=True)
    pt = toy_sub.add_parser("pretrain", help="train the toy base model from scratch")
    pt.add_argument("--out", default="runs/toy-pretrain")
    pt.add_argument("--minutes", type=number(0, above=True), default=60.0)
    pt.add_argument("--max-steps", type=integer(1), default=None)
    pt.add_argument("--batch-size", type=integer(1), default=64)
    pt.add_argument("--lr", type=number(0, 1, above=True), default=1e-3)
    pt.add_argument("--seed", type=integer(0, SEED_MAX), default=0)
    pt.add_argument("--ema-decay", type=number(0, 1), default=0.999)
    pt.add_argument("--init", default=None, help="continue from a toy checkpoint folder")
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
    pp.add_argument("--out", required=True)

    ge = sub.add_parser("geneval", help="GenEval's prompt sets")
    ge_sub = ge.add_subparsers(dest="geneval_cmd", required=True)
    gp = ge_sub.add_parser("prompts", help="write GenEval-style training prompts (default: the shipped file)")
    gp.add_argument("--out", required=True)
    gp.add_argument("--seed", type=integer(0, SEED_MAX), default=None, help="generator seed (default: the shipped file's)")
    gp.add_argument("--size", type=integer(1, 10_000_000), default=None, help="number of prompts (default: the shipped file's)")


def _parser() -> argparse.ArgumentParser:
    ap = Parser(prog="dgpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"dgpo {__version__}")
    debug_flag(ap, default=False)
    sub = ap.add_subparsers(dest="cmd", required=True)

    tr = sub.add_parser("train", help="DGPO training (no config: the toy-world default)")
    tr.add_argument("args", nargs="*", help="[config.yaml] [key=value ...]")
    tr.add_argument("--resume", action="store_true", help="continue the run in run.out_dir")

    cf = sub.add_parser("config", help="config tools")
    cf.add_argument("action", choices=["show", "options"], help="show: resolved config; options: all keys")
    cf.add_argument("args", nargs="*", help="[config.yaml] [key=value ...]")

    sa = sub.add_parser("sample", help="write a PNG grid for prompts")
    sa.add_argument("prompts", nargs="*", help="prompts (default: 16 held-out toy prompts)")
    sa.add_argument("--model", default="", help="toy checkpoint folder or run dir (default: built-in base)")
    sa.add_argument("--out", default="samples.png")
    sa.add_argument("--n", type=integer(1, 4096), default=4, help="images per prompt")
    sa.add_argument("--seed", type=integer(0, SEED_MAX), default=0)
    _sampler_args(sa)

    ev = sub.add_parser("eval", help="GenEval-style eval (toy), or a paper protocol: eval.json + eval.md")
    ev.add_argument("--model", default="",
                    help="run dir, toy checkpoint folder, diffusers folder or hub id, or 'oracle' (the toy renderer)")
    ev.add_argument("--split", default="toy:test", help="toy:test, toy:train or a GenEval .jsonl (no --protocol)")
    ev.add_argument("--images-per-prompt", type=integer(1, 4096), default=None, help="default 1; with --protocol the protocol's")
    ev.add_argument("--min-per-category", type=integer(0), default=40,
                    help="small categories get more images per prompt, to at least this many images (no --protocol)")
    ev.add_argument("--out", default="eval")
    ev.add_argument("--seed", type=integer(0, SEED_MAX), default=0)
    ev.add_argument("--batch-size", type=integer(1), default=None, help="default 64; with --protocol 8")
    _sampler_args(ev)
    ev.set_defaults(steps=None, shift=None, method=None)
    _protocol_args(ev)

    _export_and_bench_args(sub)

    _toy_and_geneval_args(sub)
    _reward_args(sub)
    for p in leaf_parsers(ap):
        if p is not ap:
            debug_flag(p)  # `dgpo train ... --debug` as well as `dgpo --debug train ...`
    return ap


def _split_cfg_args(args: list[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _load_flow_model(spec: str):
    """A toy checkpoint folder, a run dir (its slow-EMA weights), a diffusers folder or hub id, or ''
    for the built-in base."""
    from dgpo.models.loading import load_any

    return load_any(spec)


def cmd_train(a) -> None:
    from dgpo.config import load_config
    from dgpo.evaluation import markdown_table
    from dgpo.training import checkpoints
    from dgpo.training.trainer import Trainer

    path, overrides = _split_cfg_args(a.args)
    cfg = load_config(path, overrides)
    checkpoints.check_run_dir(Path(cfg.run.out_dir), a.resume)
    summary = Trainer(cfg, resume=a.resume).fit()
    if "eval_after" not in summary:
        print(f"DGPO: {summary['steps']} optimizer steps; run directory: {cfg.run.out_dir}")
        return
    before = {k: v for k, v in summary["eval_before"].items() if k != "step"}
    after = {k: v for k, v in summary["eval_after"].items() if k != "step"}
    print(f"\nDGPO: {summary['steps']} optimizer steps; held-out toy GenEval (strict, slow-EMA weights):")
    print(markdown_table({"base (before)": before, "DGPO (after)": after}))
    print(f"run directory: {cfg.run.out_dir} (summary.json, metrics.jsonl, samples/, plots/, tb/)")


def cmd_config(a) -> None:
    from dgpo.config import dump_yaml, load_config, options_markdown

    if a.action == "options":
        print(options_markdown(), end="")
        return
    path, overrides = _split_cfg_args(a.args)
    print(dump_yaml(load_config(path, overrides)), end="")


def cmd_sample(a) -> None:
    from dgpo.evaluation import model_image_fn
    from dgpo.toy.grammar import split
    from dgpo.training.io import save_grid

    model = _load_flow_model(a.model)
    metas = [{"prompt": p} for p in a.prompts] or split("test")[::20][:16]
    rows = [m for m in metas for _ in range(a.n)]
    fn = model_image_fn(model, a.steps, a.shift or model.default_shift(), a.cfg_scale, a.method)
    images = fn(rows, [a.seed + i for i in range(len(rows))])
    save_grid(images, [m["prompt"] for m in rows], Path(a.out), cols=max(a.n, 4))
    print(f"wrote {a.out} ({len(rows)} images)")


def cmd_eval(a) -> None:
    if a.protocol:
        return cmd_eval_protocol(a)
    from dgpo.data.prompts import load_prompts
    from dgpo.evaluation import evaluate, markdown_table, model_image_fn, oracle_image_fn, write_eval

    metas = load_prompts(a.split)
    if a.model == "oracle":
        fn, name = oracle_image_fn(), "oracle (renderer)"
    else:
        model = _load_flow_model(a.model)
        fn = model_image_fn(model, a.steps or 10, a.shift or model.default_shift(), a.cfg_scale, a.method or "dpm")
        name = a.model or "toy base"
    res = evaluate(fn, metas, a.images_per_prompt or 1, a.seed, a.batch_size or 64, "eval", a.min_per_category)
    write_eval(res, a.out, name)
    print(markdown_table({name: res}), end="")
    print(f"wrote {a.out}/eval.json and {a.out}/eval.md ({res['n_images']} images)")


def cmd_eval_protocol(a) -> None:
    import torch

    from dgpo.protocols import EvalSettings, RewardPaths, compare_official, evaluate_model

    if a.official_results:
        compare_official(a.out, a.official_results)
        print((Path(a.out) / "compare.md").read_text(), end="")
        return
    settings = EvalSettings(steps=a.steps or 40, cfg_scale=a.cfg_scale, shift=a.shift or 0.0, method=a.method or "euler",
                            seed=a.seed, batch_size=a.batch_size or 8, images_per_prompt=a.images_per_prompt or 0,
                            max_prompts=a.max_prompts, rewards=tuple(r.strip() for r in a.rewards.split(",") if r.strip()))
    paths = RewardPaths(a.detector, a.clip, a.pickscore_model, a.pickscore_processor, a.partial,
                        a.device or ("cuda" if torch.cuda.is_available() else "cpu"), a.aesthetic, a.hps)
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
            print(f"{name:14s} {' '.join(ov) or '(the toy default)'}")
        return
    spec = bench.quick_spec(Path(a.out)) if a.quick else bench.default_spec(Path(a.out))
    if a.arms:
        spec = replace(spec, arms=[x.strip() for x in a.arms.split(",") if x.strip()])
    if a.seeds is not None:
        spec = replace(spec, seeds=list(range(a.seeds)))
    for field, value in (("budget_s", a.budget_s), ("eval_every_s", a.eval_every_s),
                         ("eval_per_category", a.eval_per_category)):
        if value is not None:
            spec = replace(spec, **{field: value})
    if a.report_only:
        path = bench.write_report(spec, bench.load_results(spec.out / "raw"))
    else:
        bench.run_suite(spec)
        path = spec.out / "report.md"
    print(path.read_text())
    print(f"wrote {path}")


def cmd_toy(a) -> None:
    if a.toy_cmd == "prompts":
        from dgpo.toy.grammar import split, write_jsonl

        rows = split(a.split)
        write_jsonl(rows, a.out)
        print(f"wrote {len(rows)} prompts to {a.out}")
        return
    from dgpo.toy.model import ToyModelConfig
    from dgpo.toy.pretrain import parse_category_weights, pretrain

    weights = parse_category_weights(a.weights)
    if a.init and (a.coords or a.channels):
        raise InputError("--coords and --channels shape a new model; an --init model keeps its architecture")
    cfg = ToyModelConfig(channels=a.channels or ToyModelConfig.channels, coords=a.coords)
    last = pretrain(a.out, a.minutes, a.batch_size, a.lr, a.ema_decay, save_every=a.save_every, seed=a.seed,
                    cfg=cfg, max_steps=a.max_steps, init=a.init, weights=weights or None,
                    pos_embed=a.pos_embed, t_mean=a.t_mean, resume=a.resume)
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
        raise MissingPathError(f"--token-file {path!r}: no such file; write the token into it or set $DGPO_REWARD_TOKEN")
    return read_utf8(p).strip()


def cmd_reward(a) -> None:
    import os

    import torch

    from dgpo.rewards import build_reward
    from dgpo.rewards.server import RewardServer, check_bind
    from dgpo.rewards.wire import Limits

    if a.reward == "remote":
        raise InputError("--reward remote: a server cannot serve another server; name the scorer")
    token = _read_token(a.token_file) if a.token_file else os.environ.get("DGPO_REWARD_TOKEN", "")
    check_bind(a.host, token)  # before the scorer spends minutes loading
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    fn = build_reward(a.reward, a.model_path, a.processor_path, device, clip_path=a.clip_path,
                      partial=a.partial, aesthetic_path=a.aesthetic_path, hps_path=a.hps_path)
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
    a = _parser().parse_args(argv)
    handlers = {"train": cmd_train, "config": cmd_config, "sample": cmd_sample, "eval": cmd_eval,
                "bench": cmd_bench, "export": cmd_export, "toy": cmd_toy,
                "geneval": cmd_geneval, "reward": cmd_reward}
    try:
        handlers[a.cmd](a)
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
