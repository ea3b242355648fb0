"""What a run writes: metrics (JSONL + TensorBoard), image grids, PNG plots, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file


class MetricsLog:
    """One JSON object per optimizer step in ``metrics.jsonl``, mirrored to TensorBoard."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.jsonl"
        self.tb = SummaryWriter(str(run_dir / "tb"))

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "step":
                self.tb.add_scalar(k, v, row["step"])
        self.tb.flush()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def save_grid(images: torch.Tensor, captions: list[str], path: Path, cols: int = 8, scale: int = 4) -> None:
    """A PNG grid of images [B, 3, H, W] in [0, 1], upscaled, each with a short caption."""
    b, _, h, w = images.shape
    rows = (b + cols - 1) // cols
    cell_w, cell_h = w * scale, h * scale + 24
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    for i in range(b):
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        canvas.paste(Image.fromarray(arr[i]).resize((cell_w, h * scale), Image.NEAREST), (x, y))
        words = captions[i].removeprefix("a photo of ").split()
        for j, line in enumerate((" ".join(words[:3]), " ".join(words[3:7]))):
            draw.text((x + 2, y + h * scale + 1 + 11 * j), line, fill=(230, 230, 230))
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
        for key in ["overall", *[k for k in evals[0] if k not in ("step", "overall", "reward")
                                 and not k.startswith("reward_")]]:
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
    for f in [*(f"{n}.safetensors" for n in names), "optimizer.safetensors", "optimizer.json", "state.json"]:
        if not (path / f).is_file():
            raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {f}")
    parts = {n: load_file(str(path / f"{n}.safetensors")) for n in names}
    meta = json.loads((path / "optimizer.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict = {}
    for key, v in [*tensors.items(), *meta["scalars"].items()]:
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return parts, json.loads((path / "state.json").read_text())


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("step_*[0-9]"))
    return ckpts[-1] if ckpts else None
