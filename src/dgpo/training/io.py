"""What a run writes: metrics (JSONL + the run's tracker: TensorBoard or W&B), image grids, PNG plots,
checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import save_file

from dgpo.errors import CheckpointError
from dgpo.extras import require
from dgpo.training import checkpoint_checks as checks


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
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


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


def save_checkpoint(path: Path, parts: dict[str, dict[str, torch.Tensor]], opt, state: dict) -> None:
    """Tensors in safetensors (one file per part), optimizer in safetensors + JSON, state in JSON."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, tensors in parts.items():
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
    tensors, meta = _flatten_optimizer(opt)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)  # a crash mid-save never leaves a half checkpoint under the final name


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
    ckpts = sorted((run_dir / "checkpoints").glob("step_*[0-9]"))
    return ckpts[-1] if ckpts else None
