"""The reward server's wire format: JSON only (never pickle), images as lossless 8-bit PNG in base64.

Request  ``POST /score``: ``{"protocol": 1, "mode": "reward" | "eval", "images": [PNG base64, ...],
"metas": [{"prompt": ...}, ...]}`` (all images one size).
Response: ``{"protocol": 1, "scorer": NAME, "rewards": [float, ...]}``, plus ``"correct"`` in eval mode;
errors ``{"error": MESSAGE}`` with 400 (malformed, or metadata the scorer refuses), 401 (token),
413 (too large), 503 (busy), 504 (timed out), 500 (the scorer failed). NaN and infinities are refused
in both directions.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

PROTOCOL = 1
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
    max_items: int = 512
    max_pixels: int = 4096 * 4096  # per image (width x height)

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
    """Images [B, 3, H, W] in [0, 1] -> base64 PNGs of their 8-bit values (what a saved PNG holds)."""
    from dgpo.rewards.clip import to_uint8

    out = []
    for a in to_uint8(images):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=1)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def decode_image(data: Any, index: int, limits: Limits) -> np.ndarray:
    """One base64 PNG -> uint8 [H, W, 3], its size checked from the header before any pixel is decoded."""
    if not isinstance(data, str):
        raise WireError(f"images[{index}]: expected a base64 string, got {type(data).__name__}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError(f"images[{index}]: bad base64 ({e})") from None
    if not raw.startswith(PNG_SIGNATURE):
        raise WireError(f"images[{index}]: not a PNG (lossless PNG only; no JPEG, no pickle)")
    if len(raw) < 24 or raw[12:16] != b"IHDR":
        raise WireError(f"images[{index}]: corrupt PNG (no IHDR header)")
    w, h = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")  # read before Pillow decodes
    if w * h > limits.max_pixels:
        raise WireError(f"images[{index}]: {w}x{h} = {w * h} pixels exceeds the server's limit of "
                        f"{limits.max_pixels}")
    try:
        img = Image.open(io.BytesIO(raw), formats=["PNG"])
        img.load()
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except WireError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise WireError(f"images[{index}]: corrupt PNG ({type(e).__name__}: {e})") from None


@dataclass
class ScoreRequest:
    images: torch.Tensor  # [B, 3, H, W] in [0, 1], 8-bit values
    metas: list[dict]
    mode: str


def parse_score_request(body: bytes, limits: Limits) -> ScoreRequest:
    req = loads(body)
    if not isinstance(req, dict):
        raise WireError(f"the body must be a JSON object, got {type(req).__name__}")
    if req.get("protocol", PROTOCOL) != PROTOCOL:
        raise WireError(f"protocol {req.get('protocol')!r} is not supported (this server speaks {PROTOCOL})")
    mode = req.get("mode", "reward")
    if mode not in MODES:
        raise WireError(f"mode {mode!r} is not one of {list(MODES)}")
    images, metas = req.get("images"), req.get("metas")
    if not isinstance(images, list) or not images:
        raise WireError("'images' must be a non-empty list of base64 PNGs")
    if len(images) > limits.max_items:
        raise WireError(f"{len(images)} images exceed the server's limit of {limits.max_items} per request",
                        413)
    dicts = isinstance(metas, list) and all(isinstance(m, dict) for m in metas)
    if not dicts or len(metas) != len(images):
        raise WireError(f"'metas' must be a list of {len(images)} JSON objects, one per image")
    for i, m in enumerate(metas):
        if not isinstance(m.get("prompt", ""), str):
            raise WireError(f"metas[{i}].prompt must be a string")
    arrays = [decode_image(d, i, limits) for i, d in enumerate(images)]
    for i, a in enumerate(arrays):
        if a.shape != arrays[0].shape:
            raise WireError(f"images[{i}] is {a.shape[1]}x{a.shape[0]} but images[0] is "
                            f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; send one size per request")
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return ScoreRequest(pixels, metas, mode)


def check_scores(values: Any, n: int, what: str) -> list[float]:
    """A list of ``n`` finite numbers, or a WireError naming ``what``."""
    if not isinstance(values, list) or len(values) != n:
        raise WireError(f"{what}: expected a list of {n} numbers")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise WireError(f"{what}: {v!r} is not a finite number")
        out.append(float(v))
    return out
