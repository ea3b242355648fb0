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
                 scale: int = 4, sources: torch.Tensor | None = None) -> None:
    """Before / after pairs (the same prompt and seed side by side), captioned, ``cols`` pairs a row; with
    an editing model's ``sources`` [B, 3, H, W], triptychs: source | base | trained."""
    named = [("before", before), ("after", after)] if sources is None else [
        ("source", sources), ("base", before), ("trained", after)]
    step = before.shape[-1] * scale + COMPARE_GAP
    groups = []
    for tiles in zip(*(_tiles(x, scale) for _, x in named)):
        group = Image.new("RGB", (step * len(tiles) - COMPARE_GAP, tiles[0].height), (40, 40, 40))
        for j, tile in enumerate(tiles):
            group.paste(tile, (j * step, 0))
        groups.append(group)
    header = tuple((j * step, name) for j, (name, _) in enumerate(named))
    canvas = _compose(groups, [_short(c) for c in captions], cols, header=header)
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
        fig, ax = _eval_figure(plt, evals)
        from dgpo.toy.edit_grammar import CATEGORIES as EDIT_CATEGORIES
        from dgpo.toy.grammar import CATEGORIES

        scored = [e for e in evals if e.get("overall") is not None]
        for key in ["overall", *[k for k in (*CATEGORIES, *EDIT_CATEGORIES) if any(k in e for e in scored)]]:
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


def _eval_figure(plt, evals: list[dict]):
    """(figure, the accuracy axis): with out-of-domain rewards in the evals, a row of small panels below
    it, the target reward and each out-of-domain reward on its own axis (+- 2 standard errors)."""
    from dgpo.training.ood import verdict

    names = list(dict.fromkeys(n for e in evals for n in (e.get("extra") or {})))
    if not names:
        return plt.figure(figsize=(6, 3.5)), plt.gca()
    k = len(names) + 1
    fig = plt.figure(figsize=(max(6.0, 2.4 * k), 6.4))
    grid = fig.add_gridspec(2, k, height_ratios=(1.4, 1))
    v = verdict(evals)
    fell = set(v["fell"])
    series = [("target reward", "C0", lambda e: e.get("reward"), lambda e: e.get("reward_se"))]
    series += [(f"out-of-domain: {n}" + (" (fell)" if n in fell else ""), "C3" if n in fell else "C2",
                lambda e, n=n: (e.get("extra") or {}).get(n), lambda e, n=n: (e.get("extra_se") or {}).get(n))
               for n in names]
    for i, (title, colour, value, se) in enumerate(series):
        ax = fig.add_subplot(grid[1, i])
        points = [(e["step"], value(e), 2 * (se(e) or 0.0)) for e in evals if value(e) is not None]
        if points:
            ax.errorbar(*zip(*points), color=colour, marker="o", ms=3, capsize=2, lw=1.2)
        ax.set_title(title, fontsize=8, color=colour)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("optimizer step (bars: +- 2 s.e.)" if i == 0 else "optimizer step", fontsize=7)
        ax.grid(alpha=0.3)
    top = fig.add_subplot(grid[0, :])
    if v["flagged"]:
        top.set_title(f"reward hacking? the target reward rose while {', '.join(v['fell'])} fell", color="C3",
                      fontsize=9)
    return fig, top


def grid_file(images: torch.Tensor, captions: list[str], stem: Path) -> Path:
    """The sample grid of images [B, 3, H, W] as ``stem.png``, or of videos [B, F, 3, H, W] as an animated
    ``stem.gif`` (and ``stem.mp4`` with the 'video' extra); returns the file the trackers show."""
    if images.dim() == 4:
        save_grid(images, captions, stem.with_suffix(".png"))
        return stem.with_suffix(".png")
    return _animated(video_io.video_grid(images, [_short(c) for c in captions], cols=4, scale=2), stem)


def compare_file(before: torch.Tensor, after: torch.Tensor, captions: list[str], stem: Path,
                 sources: torch.Tensor | None = None) -> Path:
    """Before / after side by side: ``stem.png`` for images (with an editing model's ``sources``: source |
    base | trained), an animated ``stem.gif`` (+ ``.mp4``) for videos."""
    if before.dim() == 4:
        save_compare(before, after, captions, stem.with_suffix(".png"), sources=sources)
        return stem.with_suffix(".png")
    return _animated(video_io.compare_video(before, after, [_short(c) for c in captions], scale=2), stem)


def _animated(frames: torch.Tensor, stem: Path) -> Path:
    stem.parent.mkdir(parents=True, exist_ok=True)
    gif = video_io.write_gif(frames, stem.with_suffix(".gif"))
    if video_io.has_mp4():
        video_io.write_mp4(frames, stem.with_suffix(".mp4"))
    return gif
