"""Videos people can watch: H.264 MP4, animated GIF and WebP, captioned grids and before/after pairs.

A video here is ``[F, 3, H, W]`` (a batch of them ``[B, F, 3, H, W]``), a float tensor in ``[0, 1]``
(uint8 tensors and arrays in ``[0, 255]`` are taken too). Frames are written as their 8-bit values.

* :func:`write_mp4`: H.264 (libx264, ``yuv420p``, CRF 18, ``+faststart``) through the FFmpeg binary that
  the ``imageio-ffmpeg`` wheel ships (``pip install 'dgpo[video]'``). ``yuv420p`` halves the colour
  resolution, so it needs even sizes: an odd height or width is padded by repeating the last row or
  column (the picture is not rescaled). Plays in browsers, W&B and TensorBoard's video panels.
* :func:`write_gif`, :func:`write_webp`: animated, looping, through Pillow (no extra dependency). GIF has
  256 colours a frame and 10 ms timing steps; Pillow merges identical consecutive GIF frames (their
  time adds up, so the clip plays the same). WebP keeps full colour (lossy, quality 90).
* :func:`video_grid`: the videos of a batch tiled frame by frame, each with its caption underneath (as
  the training loop's image grids); :func:`compare_video`: before / after pairs side by side.
* :func:`read_video`: an MP4, GIF or WebP back as ``[F, 3, H, W]`` in ``[0, 1]`` (tests, checks).

Independent of the training loop: it imports only :mod:`dgpo.errors` and :mod:`dgpo.extras`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageSequence

from dgpo.errors import InputError, MissingPathError
from dgpo.extras import require

MP4_CRF = 18  # x264's constant rate factor: about visually lossless (0 lossless, 23 x264's default, 51 worst)
GRID_BACKGROUND = (40, 40, 40)
CAPTION_LINES = 4
COMPARE_GAP = 2


# ---------------------------------------------------------------------------------------------- frames
def video_frames(video: Any, what: str = "video") -> np.ndarray:
    """A video [F, 3, H, W] (float in [0, 1], or uint8) -> uint8 frames [F, H, W, 3]."""
    t = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video)
    if t.ndim != 4 or t.shape[1] != 3 or t.shape[0] < 1 or t.shape[2] < 1 or t.shape[3] < 1:
        raise InputError(f"{what}: expected frames [F, 3, H, W] (F >= 1), got shape {list(t.shape)}")
    t = t.detach().cpu()
    if t.dtype == torch.uint8:
        pixels = t
    else:
        pixels = (t.float().nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy())


def _as_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [F, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255


def even_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] padded to an even height and width by repeating the last row / column."""
    _, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _target(path: str | Path, suffixes: tuple[str, ...], what: str) -> Path:
    """Where to write: the suffix checked, the folder created; a clear error for a folder or a bad place."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{what}: {str(path)[:200]!r} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise InputError(f"{what}: {str(path)[:200]!r} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{what}: cannot create the folder {str(path.parent)[:200]!r}: {e.strerror or e}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{what}: cannot write {str(path)[:200]!r} (no write permission)")
    return path


def _check_fps(fps: float) -> float:
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not 0 < fps <= 240:
        raise InputError(f"fps={fps!r}: expected a number in (0, 240]")
    return float(fps)


# ---------------------------------------------------------------------------------------------- writers
def has_mp4() -> bool:
    """Whether MP4 can be written here (the 'video' extra: imageio-ffmpeg and its FFmpeg binary)."""
    import importlib.util

    return importlib.util.find_spec("imageio_ffmpeg") is not None


def write_mp4(video: Any, path: str | Path, fps: float = 8, crf: int = MP4_CRF) -> Path:
    """Frames [F, 3, H, W] -> an H.264 MP4 (yuv420p; odd sizes padded to even) at ``fps``; the path."""
    require("video", "writing MP4 videos")
    import imageio_ffmpeg

    fps = _check_fps(fps)
    frames = even_frames(video_frames(video))
    path = _target(path, (".mp4",), "write_mp4")
    _, h, w, _ = frames.shape
    path.unlink(missing_ok=True)  # so that a failed write cannot leave an older file looking like this one
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), pix_fmt_in="rgb24", pix_fmt_out="yuv420p", fps=fps, quality=None, codec="libx264",
        macro_block_size=1, ffmpeg_log_level="quiet", output_params=["-crf", str(int(crf)), "-movflags", "+faststart"])
    try:
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
    except (OSError, RuntimeError) as e:
        detail = " ".join(str(e).split())[:400]
        raise InputError(f"write_mp4: FFmpeg could not write {str(path)[:200]!r}: {detail}") from None
    if not path.is_file() or path.stat().st_size == 0:  # FFmpeg could not open the file: it exits quietly
        raise InputError(f"write_mp4: FFmpeg wrote nothing to {str(path)[:200]!r} (a path it cannot create?)")
    return path


def _pil_frames(video: Any) -> list[Image.Image]:
    return [Image.fromarray(f) for f in video_frames(video)]


def write_gif(video: Any, path: str | Path, fps: float = 8) -> Path:
    """Frames [F, 3, H, W] -> a looping animated GIF (adaptive 256-colour palette per frame); the path."""
    fps = _check_fps(fps)
    frames = _pil_frames(video)
    path = _target(path, (".gif",), "write_gif")
    try:
        frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                       duration=max(20, int(round(1000 / fps))), disposal=1)
    except OSError as e:
        raise InputError(f"write_gif: cannot write {str(path)[:200]!r}: {e.strerror or e}") from None
    return path


def write_webp(video: Any, path: str | Path, fps: float = 8, quality: int = 90) -> Path:
    """Frames [F, 3, H, W] -> a looping animated WebP (lossy, ``quality``); the path."""
    fps = _check_fps(fps)
    frames = _pil_frames(video)
    path = _target(path, (".webp",), "write_webp")
    try:
        frames[0].save(path, format="WEBP", save_all=True, append_images=frames[1:], loop=0,
                       duration=int(round(1000 / fps)), quality=quality, method=4)
    except OSError as e:
        raise InputError(f"write_webp: cannot write {str(path)[:200]!r}: {e.strerror or e}") from None
    return path


WRITERS = {".mp4": write_mp4, ".gif": write_gif, ".webp": write_webp}


def write_video(video: Any, path: str | Path, fps: float = 8) -> Path:
    """:func:`write_mp4`, :func:`write_gif` or :func:`write_webp` by the path's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITERS:
        raise InputError(f"write_video: {str(path)[:200]!r} must end in {', '.join(WRITERS)}")
    return WRITERS[suffix](video, path, fps)


def read_video(path: str | Path) -> torch.Tensor:
    """An MP4 (through imageio-ffmpeg), GIF or WebP -> frames [F, 3, H, W] in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"read_video: no file {str(path)[:200]!r}")
    if path.suffix.lower() == ".mp4":
        require("video", "reading MP4 videos")
        import imageio_ffmpeg

        try:
            reader = imageio_ffmpeg.read_frames(str(path))
            meta = next(reader)
            w, h = meta["size"]
            frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
        except (OSError, RuntimeError, StopIteration, ValueError) as e:
            raise InputError(f"read_video: cannot read {str(path)[:200]!r}: {' '.join(str(e).split())[:300]}") from None
        if not frames:
            raise InputError(f"read_video: {str(path)[:200]!r} has no frames")
        return _as_tensor(np.stack(frames))
    try:
        with Image.open(path) as img:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(img)]
    except (OSError, ValueError) as e:
        raise InputError(f"read_video: cannot read {str(path)[:200]!r}: {e}") from None
    return _as_tensor(np.stack(frames))


# ---------------------------------------------------------------------------------------------- grids
def wrap_caption(text: str, font, width: float, max_lines: int = 6) -> list[str]:
    """``text`` in lines of at most ``width`` pixels (words whole where they fit), "..." past ``max_lines``."""
    lines: list[str] = []
    for word in text.split():
        while font.getlength(word) > width and len(word) > 1:
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


def _layout(tile_w: int, tile_h: int, captions: list[str], cols: int, header: tuple = ()):
    """The still part of a grid (background, captions, column headers) and each tile's top-left corner."""
    font = ImageFont.load_default()
    wrapped = [wrap_caption(c, font, tile_w - 4, CAPTION_LINES) for c in captions]
    line_h = font.getbbox("Ag")[3] + 2
    cap_h = line_h * max([len(w) for w in wrapped] + [0]) + 4
    head_h = line_h + 2 if header else 0
    rows = (len(captions) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * tile_w, head_h + rows * (tile_h + cap_h)), GRID_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for col in range(cols if header else 0):
        for dx, text in header:
            draw.text((col * tile_w + dx + 2, 1), text, fill=(255, 210, 120), font=font)
    corners = []
    for i, lines in enumerate(wrapped):
        x, y = (i % cols) * tile_w, head_h + (i // cols) * (tile_h + cap_h)
        corners.append((x, y))
        for j, line in enumerate(lines):
            draw.text((x + 2, y + tile_h + 2 + line_h * j), line, fill=(230, 230, 230), font=font)
    return canvas, corners


def _videos(videos: Any, what: str) -> np.ndarray:
    """[B, F, 3, H, W] -> uint8 [B, F, H, W, 3]."""
    t = videos if isinstance(videos, torch.Tensor) else torch.as_tensor(np.asarray(videos))
    if t.ndim != 5 or len(t) < 1:
        raise InputError(f"{what}: expected videos [B, F, 3, H, W] (B >= 1), got shape {list(t.shape)}")
    return np.stack([video_frames(v, what) for v in t])


def _scaled(frame: np.ndarray, scale: int) -> Image.Image:
    img = Image.fromarray(frame)
    return img if scale == 1 else img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def _tile_frames(tiles: np.ndarray, captions: list[str], cols: int, scale: int, header: tuple = ()) -> torch.Tensor:
    """uint8 tiles [N, F, h, w, 3] -> the captioned grid's frames [F, 3, H', W'] in [0, 1]."""
    n, f, h, w, _ = tiles.shape
    cols = max(1, min(cols, n))
    base, corners = _layout(w * scale, h * scale, captions, cols, header)
    out = []
    for k in range(f):
        canvas = base.copy()
        for i, corner in enumerate(corners):
            canvas.paste(_scaled(tiles[i, k], scale), corner)
        out.append(np.asarray(canvas))
    return _as_tensor(np.stack(out))


def _captions(captions: list[str] | None, n: int, what: str) -> list[str]:
    captions = [""] * n if captions is None else [str(c) for c in captions]
    if len(captions) != n:
        raise InputError(f"{what}: {len(captions)} captions for {n} videos")
    return captions


def video_grid(videos: Any, captions: list[str] | None = None, cols: int = 4, scale: int = 1) -> torch.Tensor:
    """Videos [B, F, 3, H, W] -> the frames [F, 3, H', W'] of an animated grid: ``cols`` videos a row, each
    upscaled ``scale`` times (nearest) with its caption wrapped underneath (at most 4 lines)."""
    arr = _videos(videos, "video_grid")
    return _tile_frames(arr, _captions(captions, len(arr), "video_grid"), cols, scale)


def compare_video(before: Any, after: Any, captions: list[str] | None = None, cols: int = 2,
                  scale: int = 1) -> torch.Tensor:
    """Before / after videos [B, F, 3, H, W] (the same prompts and seeds) side by side, ``cols`` pairs a
    row, "before" / "after" above each column, captions underneath -> frames [F, 3, H', W']."""
    a, b = _videos(before, "compare_video"), _videos(after, "compare_video")
    if a.shape != b.shape:
        raise InputError(f"compare_video: before {list(a.shape)} and after {list(b.shape)} differ ([B, F, H, W, 3])")
    gap = np.full((*a.shape[:3], COMPARE_GAP, 3), GRID_BACKGROUND, np.uint8)
    if scale != 1:  # upscale each half before joining them so that the gap stays thin
        a = np.repeat(np.repeat(a, scale, axis=2), scale, axis=3)
        b = np.repeat(np.repeat(b, scale, axis=2), scale, axis=3)
        gap = np.full((*a.shape[:3], COMPARE_GAP, 3), GRID_BACKGROUND, np.uint8)
    pairs = np.concatenate([a, gap, b], axis=3)
    header = ((0, "before"), (a.shape[3] + COMPARE_GAP, "after"))
    return _tile_frames(pairs, _captions(captions, len(pairs), "compare_video"), cols, 1, header)
