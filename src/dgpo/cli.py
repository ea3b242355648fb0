"""`dgpo` command line: train, config show/options, sample, eval, export, bench, toy pretrain/prompts,
geneval prompts, reward serve. No logic lives here.

A mistake in the input (a :class:`~dgpo.errors.UserError`, a bad command line, or the file system refusing
a path: an ``OSError`` that names a file) ends with one line on stderr, ``dgpo CMD: error: ...``, and exit
status 2; ``--debug`` adds the traceback. Any other exception is a bug in dgpo and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from dgpo.cli_generate import cmd_eval, cmd_sample
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


def _say_why_on_sigterm():
    """One line on stderr when a launcher or scheduler stops the run (SIGTERM: torchrun and accelerate stop
    every process when one fails; a preemption); the process still ends by the signal. -> the handler it
    replaced."""

    def handler(signum, frame):
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")
        who = f"process {rank} of {world}" if rank is not None and world != "1" else "the run"
        print(f"dgpo train: stopped: {who} got SIGTERM (a launcher stops every process when one fails; or a "
              "preemption); the newest complete checkpoint is kept: relaunch with --resume", file=sys.stderr,
              flush=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding program's worker): its signals are not ours
        return None


def cmd_train(a) -> None:
    from dgpo.config import load_config
    from dgpo.evaluation import markdown_table
    from dgpo.training import checkpoints, ood
    from dgpo.training.trainer import Trainer

    path, overrides = _split_cfg_args(a.args)
    cfg = load_config(path, overrides)
    checkpoints.check_run_dir(Path(cfg.run.out_dir), a.resume)
    from dgpo.training.distributed import peers_watched

    previous = _say_why_on_sigterm()
    try:
        with peers_watched():  # another process died: one line, not a collective's traceback
            summary = Trainer(cfg, resume=a.resume, change_processes=a.change_processes).fit()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    name = {"dgpo": "DGPO", "flow_grpo": "Flow-GRPO", "dpo": "DPO", "nft": "DiffusionNFT",
            "awm": "AWM"}[cfg.train.algorithm]
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
        if a.debug:
            import traceback

            traceback.print_exc()
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
