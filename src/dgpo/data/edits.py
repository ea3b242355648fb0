"""Edit prompt files: one JSON object per line, an instruction and its source image(s), e.g.

    {"prompt": "make it three apples", "source": "images/0001.png", "tag": "counting",
     "include": [{"class": "apple", "count": 3}]}
    {"prompt": "put the cat from picture 2 on the sofa", "source": ["room.png", "cat.png"]}

``source`` is a path or a list of paths, relative to the prompt file (Flow-GRPO's counting-edit metadata
names it ``image``, accepted too); every row gets ``source_images``: the absolute paths, in order. The
row's other keys are the reward's metadata and come along unchanged (GenEval's ``tag`` / ``include`` /
``exclude``, checked as GenEval reads them when present). Each image is opened at load, so that a
missing, unreadable or non-image file is a one-line error naming the line, before any model loads.
The editing families check what they take (how many images, their size) with :func:`check_sources`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from dgpo.errors import InputError, MissingPathError, short

SOURCE_KEYS = ("source", "image")  # ours; Flow-GRPO's counting-edit metadata
MAX_PIXELS = 64 * 1024 * 1024  # a bigger source is refused (a decompression bomb, or a mistake)


def is_edit_file(path: Path) -> bool:
    """Whether a .jsonl prompt file is an edit file: its first row has a ``source`` (or ``image``) key."""
    from dgpo.toy.grammar import read_utf8

    for line in read_utf8(path).splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                return False  # the GenEval reader reports the bad line
            return isinstance(row, dict) and any(k in row for k in SOURCE_KEYS)
    return False


def read_edits(path: Path) -> list[dict]:
    """The rows of an edit prompt file, each with ``source_images`` (absolute paths); errors name the line."""
    from dgpo.toy.grammar import read_utf8

    rows = []
    for i, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(_edit_row(line, path.parent))
        except (InputError, MissingPathError) as e:
            raise type(e)(f"edit prompt file {path}:{i}: {e}") from None
    if not rows:
        raise InputError(f"edit prompt file {path}: no rows; write one JSON object per line")
    return rows


def _edit_row(line: str, folder: Path) -> dict:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise InputError(f"not valid JSON ({type(e).__name__}); write one JSON object per line") from None
    if not isinstance(row, dict):
        raise InputError("a row is a JSON object with 'prompt' and 'source'")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"'prompt' (the edit instruction) must be a non-empty string, got {short(prompt)}")
    key = next((k for k in SOURCE_KEYS if k in row), None)
    given = row.get(key) if key else None
    names = [given] if isinstance(given, str) else given
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise InputError(f"'source' must be an image path or a non-empty list of them, got {short(given)}")
    if "tag" in row and not isinstance(row["tag"], str):
        raise InputError(f"'tag' must be a string (GenEval's category), got {short(row['tag'])}")
    if "include" in row:  # GenEval metadata for the reward, as GenEval's rules read it
        from dgpo.rewards.geneval.rules import check_meta

        check_meta(row)
    paths = [str((folder / n).resolve()) for n in names]
    for p in paths:
        image_size(p)
    return {**row, "include": row.get("include", []), "source_images": paths}


@functools.lru_cache(maxsize=4096)
def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file, read from its header; a one-line error if it is missing or not
    an image."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise MissingPathError(f"source image {path}: no such file")
    try:
        with Image.open(p) as img:
            w, h = img.size
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"source image {path}: not a readable image ({type(e).__name__}: {short(str(e))})") from None
    if w * h > MAX_PIXELS:
        raise InputError(f"source image {path}: {w}x{h} pixels, more than the {MAX_PIXELS} read")
    return w, h


def check_sources(rows: list[dict], who: str, max_images: int = 1, size: tuple[int, int] | None = None,
                  square: bool = False, same_count: bool = False) -> None:
    """What a family takes, checked on every row: ``source_images`` present (an edit prompt file), at most
    ``max_images`` of them, exactly ``size`` (width, height) pixels when given, square (within 1 %: the
    image is resized to the training resolution, which must not distort it) when ``square``, and as many in
    every row when ``same_count`` (rows are batched together). A one-line error names the row and image."""
    counts = set()
    for row in rows:
        paths = row.get("source_images")
        where = f"{who}: the prompt {short(row.get('prompt'))}"
        if not paths:
            raise InputError(f"{where} has no source image; {who} edits images: give an edit prompt file "
                             "(JSON lines with 'prompt' and 'source')")
        if len(paths) > max_images:
            raise InputError(f"{where} has {len(paths)} source images; {who} takes at most {max_images}")
        counts.add(len(paths))
        for p in paths:
            w, h = image_size(p)
            if size is not None and (w, h) != tuple(size):
                raise InputError(f"{where}: source image {p} is {w}x{h}; {who} needs {size[0]}x{size[1]}")
            if square and abs(w / h - 1) > 0.01:
                raise InputError(f"{where}: source image {p} is {w}x{h}; {who} resizes sources to the square "
                                 "training resolution (model.resolution), which would distort it: crop it square")
    if same_count and len(counts) > 1:
        raise InputError(f"{who}: rows have {sorted(counts)} source images; every row needs as many (they are "
                         "batched together)")


@functools.lru_cache(maxsize=64)
def _pixels(path: str) -> np.ndarray:
    from PIL import Image

    image_size(path)
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    arr.setflags(write=False)
    return arr


def open_source(path: str):
    """A source image as an RGB PIL image (its 8-bit pixels cached per process)."""
    from PIL import Image

    return Image.fromarray(_pixels(path))


def load_source(path: str) -> torch.Tensor:
    """A source image as a float tensor [3, H, W] in [0, 1] (a new tensor each call; the 8-bit pixels are
    cached per process)."""
    return torch.from_numpy(_pixels(path).copy()).permute(2, 0, 1).float() / 255.0
