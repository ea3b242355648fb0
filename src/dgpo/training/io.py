"""What a run writes: metrics (JSONL + the run's tracker: TensorBoard or W&B), image grids, PNG plots,
checkpoints."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import save_file

from dgpo.errors import CheckpointError
from dgpo.extras import require
from dgpo.errors import CheckpointError
from dgpo.training import checkpoint_checks as checks
from dgpo.training import checkpoints

log = logging.getLogger(__name__)


class MetricsLog:
    """One JSON object per optimizer step in ``metrics.jsonl``, mirrored to the run's tracker
    (``log``: accelerate's ``Accelerator.log``, a no-op without trackers)."""

    def __init__(self, run_dir: Path, log=None):
        self.path = run_dir / "metrics.jsonl"
        self.log = log

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.log is not None:
            self.log(scalars(row), step=row["step"])

    def read(self) -> list[dict]:
        return read_jsonl(self.path)[0]


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(the rows of a JSONL file, the number of unreadable lines: a last line torn by a kill)."""
    if not path.exists():
        return [], 0
    rows, torn = [], 0
    for line in filter(str.strip, path.read_text().splitlines()):
        try:
            rows.append(json.loads(line))
        except ValueError:
            torn += 1
    return rows, torn


def write_text_atomic(path: Path, text: str) -> None:
    """The file whole or not at all: a temporary file, renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def repair_logs(run_dir: Path, step: int, evals: list[dict]) -> None:
    """At a resume from the checkpoint of ``step``: ``metrics.jsonl`` keeps its rows up to ``step`` (the
    killed run's later rows are recomputed; a torn line goes) and ``evals.jsonl`` is rewritten from the
    checkpoint's evals, so no step appears twice or goes missing."""
    rows, torn = read_jsonl(run_dir / "metrics.jsonl")
    kept = [r for r in rows if r["step"] <= step]
    write_text_atomic(run_dir / "metrics.jsonl", _jsonl(kept))
    write_text_atomic(run_dir / "evals.jsonl", _jsonl(evals))
    if torn or len(kept) < len(rows):
        log.info("resume at step %d: dropped %d metrics rows of later steps and %d torn lines",
                 step, len(rows) - len(kept), torn)


def relog_step(acc, run_dir: Path, step: int, evals: list[dict]) -> None:
    """After a resume from the checkpoint of ``step``, whose tracker hides what was logged from ``step`` on
    (a killed process may have logged the final eval there after the checkpoint): that step's metrics,
    evals and sample grid again, from the run's files."""
    for row in MetricsLog(run_dir).read():
        if row["step"] == step:
            acc.log(scalars(row), step=step)
    for row in evals:
        if row["step"] == step:
            acc.log(scalars(row, "eval/"), step=step)
    grid = run_dir / "samples" / f"step_{step:05d}.png"
    if grid.is_file():
        log_image(acc.trackers, f"samples/{grid.stem}", grid, step)


FRESH_START_REMOVES = ("metrics.jsonl", "evals.jsonl", "summary.json", "checkpoints", "samples/before.safetensors")


def clear_run(run_dir: Path) -> None:
    """A fresh start (no ``--resume``) in a folder that holds an earlier run: that run's logs, summary
    and checkpoints go, so rows and checkpoints of two runs never mix."""
    import shutil

    old = [run_dir / n for n in FRESH_START_REMOVES if (run_dir / n).exists()]
    if old:
        log.warning("fresh start in %s (no --resume): removing the earlier run's %s", run_dir,
                    ", ".join(p.name for p in old))
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def scalars(row: dict, prefix: str = "") -> dict:
    """The numbers of a metrics or eval row (not its step) for a tracker, keys prefixed."""
    return {prefix + k: v for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


def tracker_setup(log_with: str, project: str, run_dir: Path) -> tuple[str | None, str, dict]:
    """``Accelerator(log_with=...)``, then ``init_trackers``' project name and init_kwargs for
    ``run.log_with``: TensorBoard writes ``<run_dir>/tb``; W&B names the run after the run folder and
    keeps its files there unless ``WANDB_DIR`` says otherwise."""
    if log_with == "none":
        return None, "", {}
    if log_with == "tensorboard":
        return "tensorboard", "tb", {}
    require("wandb", "run.log_with=wandb (or set run.log_with=none)")
    kwargs = {"name": run_dir.name}
    if not os.environ.get("WANDB_DIR"):
        kwargs["dir"] = str(run_dir)
    return "wandb", project, {"wandb": kwargs}


def purge_from(init_kwargs: dict, step: int) -> dict:
    """``init_trackers`` kwargs with TensorBoard's ``purge_step``: TensorBoard hides what earlier processes
    of the run logged at ``step`` and later (a resumed run logs that step again: :func:`relog_step`)."""
    return {**init_kwargs, "tensorboard": {**init_kwargs.get("tensorboard", {}), "purge_step": step}}


def flat_config(data: dict, prefix: str = "") -> dict:
    """A nested config as ``section.key`` -> bool / int / float / str (what trackers' hparams take)."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


def log_image(trackers: list, tag: str, path: Path, step: int) -> None:
    """A saved PNG (a sample grid) to each tracker, under ``tag`` at ``step``."""
    if not trackers:
        return
    arr = np.asarray(Image.open(path).convert("RGB"))
    for t in trackers:
        if t.name == "tensorboard":
            t.log_images({tag: arr[None]}, step=step, dataformats="NHWC")
        else:
            t.log_images({tag: [arr]}, step=step)


CAPTION_LINES = 6  # longer captions end in "..." (the toy's longest caption takes 3 lines at 128 px)


def wrap_caption(text: str, font, width: float, max_lines: int = CAPTION_LINES) -> list[str]:
    """``text`` broken into lines of at most ``width`` pixels (words whole where they fit); past
    ``max_lines`` the last line ends in "..."."""
    lines: list[str] = []
    for word in text.split():
        while font.getlength(word) > width and len(word) > 1:  # a word wider than the line: split it
            cut = 1
            while font.getlength(word[: cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last + "..."]
    return lines


def _compose(tiles: list[Image.Image], captions: list[str], cols: int, header: tuple = ()) -> Image.Image:
    """Tiles in rows of ``cols``, each with its caption wrapped underneath; ``header``: (x offset, text)
    labels above every column."""
    font = ImageFont.load_default()
    cols = min(cols, len(tiles))
    tile_w, tile_h = tiles[0].size
    wrapped = [wrap_caption(c, font, tile_w - 4) for c in captions]
    line_h = font.getbbox("Ag")[3] + 2
    cap_h = line_h * max(len(w) for w in wrapped) + 4
    head_h = line_h + 2 if header else 0
    rows = (len(tiles) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * tile_w, head_h + rows * (tile_h + cap_h)), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for col in range(cols if header else 0):
        for dx, text in header:
            draw.text((col * tile_w + dx + 2, 1), text, fill=(255, 210, 120), font=font)
    for i, (tile, lines) in enumerate(zip(tiles, wrapped)):
        x, y = (i % cols) * tile_w, head_h + (i // cols) * (tile_h + cap_h)
        canvas.paste(tile, (x, y))
        for j, line in enumerate(lines):
            draw.text((x + 2, y + tile_h + 2 + line_h * j), line, fill=(230, 230, 230), font=font)
    return canvas


def _tiles(images: torch.Tensor, scale: int) -> list[Image.Image]:
    _, _, h, w = images.shape
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a).resize((w * scale, h * scale), Image.NEAREST) for a in arr]


def _short(caption: str) -> str:
    return caption.removeprefix("a photo of ")


def save_grid(images: torch.Tensor, captions: list[str], path: Path, cols: int = 8, scale: int = 4) -> None:
    """A PNG grid of images [B, 3, H, W] in [0, 1], upscaled, each with its caption wrapped below."""
    canvas = _compose(_tiles(images, scale), [_short(c) for c in captions], cols)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


COMPARE_GAP = 2


def save_compare(before: torch.Tensor, after: torch.Tensor, captions: list[str], path: Path, cols: int = 4,
                 scale: int = 4) -> None:
    """Before / after pairs (the same prompt and seed side by side), captioned, ``cols`` pairs a row."""
    pairs = []
    for a, b in zip(_tiles(before, scale), _tiles(after, scale)):
        pair = Image.new("RGB", (a.width * 2 + COMPARE_GAP, a.height), (40, 40, 40))
        pair.paste(a, (0, 0))
        pair.paste(b, (a.width + COMPARE_GAP, 0))
        pairs.append(pair)
    w = before.shape[-1] * scale
    header = ((0, "before"), (w + COMPARE_GAP, "after"))
    canvas = _compose(pairs, [_short(c) for c in captions], cols, header=header)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def plot_curves(metrics: list[dict], evals: list[dict], out_dir: Path) -> None:
    """plots/reward.png (rollout reward per step) and plots/eval.png (held-out strict accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    if metrics:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        steps = [m["step"] for m in metrics]
        ax.plot(steps, [m["reward_mean"] for m in metrics], label="rollout reward")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "reward.png", dpi=110)
        plt.close(fig)
    if evals:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        steps = [e["step"] for e in evals]
        from dgpo.toy.grammar import CATEGORIES

        for key in ["overall", *[k for k in CATEGORIES if k in evals[0]]]:
            ax.plot(steps, [e[key] for e in evals], marker="o", lw=2 if key == "overall" else 1, label=key)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("held-out strict accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "eval.png", dpi=110)
        plt.close(fig)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(path: Path, parts: dict[str, dict[str, torch.Tensor]], opt, state: dict, keep: int = 0) -> None:
    """Tensors in safetensors (one file per part), optimizer in safetensors + JSON, state in JSON; written
    to a temporary folder, with a manifest last, then renamed (see :mod:`dgpo.training.checkpoints`);
    afterwards only the newest ``keep`` checkpoints stay (0: all)."""
    tensors, meta = _flatten_optimizer(opt)
    with checkpoints.writing(path, state["step"], keep) as tmp:
        for name, part in parts.items():
            save_file({k: v.detach().contiguous() for k, v in part.items()}, str(tmp / f"{name}.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


def load_checkpoint(path: Path, names: list[str], opt) -> tuple[dict, dict]:
    """(parts, trainer state) of a checkpoint written by :func:`save_checkpoint`; the optimizer state
    goes into ``opt``. A checkpoint that cannot be read back (a file missing, truncated or corrupt, the
    optimizer of another model) raises a CheckpointError naming the file, before ``opt`` is touched."""
    for f in [*(f"{n}.safetensors" for n in names), "optimizer.safetensors", "optimizer.json", "state.json"]:
        if not (path / f).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: missing {f}; {checks.FIX}")
    parts = {n: checks.read_tensors(path / f"{n}.safetensors") for n in names}
    opt_state = checks.optimizer_state(checks.read_tensors(path / "optimizer.safetensors"),
                                       checks.read_json(path / "optimizer.json"), opt, path)
    state = checks.read_json(path / "state.json")
    checks.check_trainer_state(state, path / "state.json")
    opt.load_state_dict(opt_state)
    return parts, state


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run whose files match their manifest (newer broken ones are logged)."""
    ckpt, skipped = checkpoints.pick(run_dir)
    for line in skipped:
        log.warning("skipped checkpoint %s", line)
    return ckpt
