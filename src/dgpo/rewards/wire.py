"""The reward server's wire format: JSON only (never pickle), images as lossless 8-bit PNG in base64.

Request  ``POST /score``: ``{"protocol": 3, "mode": "reward" | "eval", "shape": [B, 3, H, W] or
[B, F, 3, H, W], "images": [PNG base64, ...], "metas": [{"prompt": ...}, ...]}``: B images, or B videos
of F frames each sent as B * F PNGs, video after video (video b's frame f is ``images[b * F + f]``);
all PNGs one size, ``H`` x ``W``; one metadata row per image or video. ``shape`` may be left out for
images (then ``[len(images), 3, H, W]``); a video request needs it.
Response: ``{"protocol": 3, "scorer": NAME, "rewards": [float | null, ...]}`` (one per image or video;
``null``: the scorer's value for that sample was not finite, NaN or an infinity), plus ``"correct"`` (the
same) in eval mode; errors ``{"error": MESSAGE}`` with 400 (malformed, a shape the PNGs do not
fill, an older protocol, or input the scorer refuses: metadata, images for a video scorer or the
reverse), 401 (token), 413 (too large), 503 (busy), 504 (timed out), 500 (the scorer failed). The JSON is
strict both ways: the constants NaN and Infinity are refused; a non-finite score travels as ``null``, and
the client turns it back into NaN, so that one bad sample costs its own group only, as in-process.

Protocol 3 carries a non-finite score as ``null`` (protocol 2 failed the whole request with a 500);
protocol 2 added the frame axis (``shape``, ``/health``'s ``modality``); protocol 1 had images only.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dgpo.errors import short

PROTOCOL = 3
CHANGES = "protocol 2 added videos, protocol 3 non-finite scores as null"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODES = ("reward", "eval")


class WireError(ValueError):
    """A request or response that breaks the protocol; ``status`` is the HTTP answer it deserves."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 256 << 20  # a 64-image batch of 512^2 PNGs is about 30 MB in base64
    max_items: int = 512  # PNGs per request: images, or all the frames of its videos
    max_pixels: int = 4096 * 4096  # per image or frame (width x height)

    def as_dict(self) -> dict:
        return {"max_body_bytes": self.max_body_bytes, "max_items": self.max_items,
                "max_pixels": self.max_pixels}


def _no_constants(name: str):
    raise WireError(f"malformed JSON: {name} is not allowed (finite numbers only)")


def loads(data: bytes, what: str = "body") -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, bounded nesting (Python's recursion limit)."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except WireError:
        raise
    except UnicodeDecodeError as e:
        raise WireError(f"malformed JSON: the {what} is not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise WireError(f"malformed JSON in the {what}: {e.msg} at line {e.lineno} "
                        f"column {e.colno}") from None
    except RecursionError:
        raise WireError(f"malformed JSON: the {what} is nested too deeply") from None
    except ValueError as e:  # e.g. an integer too long to convert
        raise WireError(f"malformed JSON in the {what}: {e}") from None


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


def encode_images(images: torch.Tensor) -> list[str]:
    """Images [B, 3, H, W] (or videos [B, F, 3, H, W]: B * F frames, video after video) in [0, 1] ->
    base64 PNGs of their 8-bit values (what a saved PNG holds)."""
    from dgpo.rewards.clip import to_uint8

    out = []
    for a in to_uint8(images.flatten(0, 1) if images.ndim == 5 else images):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=1)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def decode_image(data: Any, index: int | str, limits: Limits) -> np.ndarray:
    """One base64 PNG -> uint8 [H, W, 3], its size checked from the header before any pixel is decoded.
    ``index``: the PNG's place in the request (an int: ``images[i]``), or its whole label in messages."""
    at = index if isinstance(index, str) else f"images[{index}]"
    if not isinstance(data, str):
        raise WireError(f"{at}: expected a base64 string, got {type(data).__name__}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError(f"{at}: bad base64 ({e})") from None
    if not raw.startswith(PNG_SIGNATURE):
        raise WireError(f"{at}: not a PNG (lossless PNG only; no JPEG, no pickle)")
    if len(raw) < 24 or raw[12:16] != b"IHDR":
        raise WireError(f"{at}: corrupt PNG (no IHDR header)")
    w, h = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")  # read before Pillow decodes
    if w * h > limits.max_pixels:
        raise WireError(f"{at}: {w}x{h} = {w * h} pixels exceeds the server's limit of "
                        f"{limits.max_pixels}")
    try:
        img = Image.open(io.BytesIO(raw), formats=["PNG"])
        img.load()
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except WireError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise WireError(f"{at}: corrupt PNG ({type(e).__name__}: {e})") from None


@dataclass
class ScoreRequest:
    images: torch.Tensor  # [B, 3, H, W] or videos [B, F, 3, H, W], in [0, 1], 8-bit values
    metas: list[dict]
    mode: str

    @property
    def modality(self) -> str:
        return "video" if self.images.ndim == 5 else "image"


def _shape(value: Any, n_pngs: int, limits: Limits) -> tuple[int, ...] | None:
    """The declared ``shape`` checked against the number of PNGs before any is decoded (None: absent)."""
    if value is None:
        return None
    ints = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ints or len(value) not in (4, 5) or value[-3] != 3 or any(v < 1 for v in value):
        raise WireError(f"'shape' must be [B, 3, H, W] (images) or [B, F, 3, H, W] (videos) of positive "
                        f"integers, got {short(value)}")
    *lead, _, h, w = value
    if h > limits.max_pixels or w > limits.max_pixels or h * w > limits.max_pixels:  # sizes first: no giant product
        raise WireError(f"'shape' {short(value)}: {short(w)}x{short(h)} pixels per image exceeds the server's "
                        f"limit of {limits.max_pixels}")
    if any(v > limits.max_items for v in lead):
        raise WireError(f"'shape' {short(value)} exceeds the server's limit of {limits.max_items} images per "
                        "request (a video counts its frames)", 413)
    declared = math.prod(lead)
    if declared != n_pngs:
        plural = lambda n, word: f"{n} {word}{'' if n == 1 else 's'}"  # noqa: E731
        what = (f"{plural(lead[0], 'video')} of {plural(lead[1], 'frame')}" if len(lead) == 2
                else plural(lead[0], "image"))
        raise WireError(f"'shape' {value} declares {what} ({declared} PNGs) but 'images' holds {n_pngs}: "
                        "a truncated or damaged request")
    return tuple(value)


def parse_score_request(body: bytes, limits: Limits) -> ScoreRequest:
    req = loads(body)
    if not isinstance(req, dict):
        raise WireError(f"the body must be a JSON object, got {type(req).__name__}")
    protocol = req.get("protocol", PROTOCOL)
    if protocol != PROTOCOL or isinstance(protocol, bool):
        raise WireError(f"protocol {short(protocol)} is not supported: this server speaks protocol {PROTOCOL} "
                        f"({CHANGES}); run the same dgpo version on the client and the server")
    mode = req.get("mode", "reward")
    if mode not in MODES:
        raise WireError(f"mode {short(mode)} is not one of {list(MODES)}")
    images, metas = req.get("images"), req.get("metas")
    if not isinstance(images, list) or not images:
        raise WireError("'images' must be a non-empty list of base64 PNGs")
    if len(images) > limits.max_items:
        raise WireError(f"{len(images)} images exceed the server's limit of {limits.max_items} per request "
                        "(a video counts its frames)", 413)
    shape = _shape(req.get("shape"), len(images), limits)
    n, frames = (shape[0], shape[1]) if shape is not None and len(shape) == 5 else (len(images), 0)
    unit = "video" if frames else "image"
    dicts = isinstance(metas, list) and all(isinstance(m, dict) for m in metas)
    if not dicts or len(metas) != n:
        raise WireError(f"'metas' must be a list of {n} JSON objects, one per {unit}")
    for i, m in enumerate(metas):
        if not isinstance(m.get("prompt", ""), str):
            raise WireError(f"metas[{i}].prompt must be a string")
    where = (lambda i: f"images[{i}] (video {i // frames}, frame {i % frames})") if frames else \
        (lambda i: f"images[{i}]")
    arrays = [decode_image(d, where(i), limits) for i, d in enumerate(images)]
    expected = (shape[-2], shape[-1]) if shape is not None else arrays[0].shape[:2]
    for i, a in enumerate(arrays):
        if a.shape[:2] != expected:
            first = "the declared shape's" if shape is not None else "images[0]'s"
            raise WireError(f"{where(i)} is {a.shape[1]}x{a.shape[0]} but {first} size is "
                            f"{expected[1]}x{expected[0]}; send one size per request")
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    if frames:
        pixels = pixels.reshape(n, frames, *pixels.shape[1:])
    return ScoreRequest(pixels, metas, mode)


def score_values(values: list[float]) -> list[float | None]:
    """Scores for an answer: a non-finite one as None (``null``; strict JSON has no NaN)."""
    return [float(v) if math.isfinite(v) else None for v in values]


def check_scores(values: Any, n: int, what: str) -> list[float]:
    """An answer's list of ``n`` scores, each a finite number or ``null`` (NaN here), or a WireError naming
    ``what``."""
    if not isinstance(values, list) or len(values) != n:
        raise WireError(f"{what}: expected a list of {n} numbers")
    out = []
    for v in values:
        if v is None:  # the scorer's value was not finite: this sample's group is dropped, not the call
            out.append(float("nan"))
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise WireError(f"{what}: {v!r} is not a finite number or null")
        out.append(float(v))
    return out
