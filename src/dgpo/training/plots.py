"""What a run draws: captioned image grids, before / after comparisons, PNG curves of reward and eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dgpo import video_io
from dgpo.video_io import wrap_caption

CAPTION_LINES = 6  # longer captions end in "..." (the toy's longest caption takes 3 lines at 128 px)


def _compose(tiles: list[Image.Image], captions: list[str], cols: int, header: tuple = ()) -> Image.Image:
    """Tiles in rows of ``cols``, each with its caption wrapped underneath; ``header``: (x offset, text)
    labels above every column."""
    font = ImageFont.load_default()
    cols = min(cols, len(tiles))
    tile_w, tile_h = tiles[0].size
    wrapped = [wrap_caption(c, font, tile_w - 4, CAPTION_LINES) for c in captions]
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
    """plots/reward.png (rollout reward per step) and plots/eval.png (held-out strict accuracy; an eval
    whose reward failed throughout, ``overall`` null, is a dotted line labelled "eval missing")."""
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
        from dgpo.toy.grammar import CATEGORIES

        scored = [e for e in evals if e.get("overall") is not None]
        for key in ["overall", *[k for k in CATEGORIES if any(k in e for e in scored)]]:
            points = [(e["step"], e[key]) for e in scored if e.get(key) is not None]
            ax.plot(*zip(*points), marker="o", lw=2 if key == "overall" else 1, label=key)
        for i, e in enumerate(e for e in evals if e.get("overall") is None):  # the reward failed throughout
            ax.axvline(e["step"], color="grey", ls=":", lw=1.5,
                       label="eval missing (reward failed)" if i == 0 else None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("held-out strict accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "eval.png", dpi=110)
        plt.close(fig)


def grid_file(images: torch.Tensor, captions: list[str], stem: Path) -> Path:
    """The sample grid of images [B, 3, H, W] as ``stem.png``, or of videos [B, F, 3, H, W] as an animated
    ``stem.gif`` (and ``stem.mp4`` with the 'video' extra); returns the file the trackers show."""
    if images.dim() == 4:
        save_grid(images, captions, stem.with_suffix(".png"))
        return stem.with_suffix(".png")
    return _animated(video_io.video_grid(images, [_short(c) for c in captions], cols=4, scale=2), stem)


def compare_file(before: torch.Tensor, after: torch.Tensor, captions: list[str], stem: Path) -> Path:
    """Before / after side by side: ``stem.png`` for images, an animated ``stem.gif`` (+ ``.mp4``) for videos."""
    if before.dim() == 4:
        save_compare(before, after, captions, stem.with_suffix(".png"))
        return stem.with_suffix(".png")
    return _animated(video_io.compare_video(before, after, [_short(c) for c in captions], scale=2), stem)


def _animated(frames: torch.Tensor, stem: Path) -> Path:
    stem.parent.mkdir(parents=True, exist_ok=True)
    gif = video_io.write_gif(frames, stem.with_suffix(".gif"))
    if video_io.has_mp4():
        video_io.write_mp4(frames, stem.with_suffix(".mp4"))
    return gif
