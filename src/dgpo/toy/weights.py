"""Saving and loading toy checkpoints: ``model.safetensors`` + ``config.json`` in a folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dgpo.errors import InputError, MissingPathError, short, user_path
from dgpo.toy.model import ToyModelConfig, ToyUNet

BUILTIN_BASE = Path(__file__).parent / "base"


def save_toy(model: torch.nn.Module, folder: str | Path, info: dict | None = None, kind: str | None = None) -> None:
    """``model.safetensors`` + ``config.json`` (``{"kind": kind, "model": {...}, "info": ...}``; an image
    checkpoint names no kind)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    meta = {**({"kind": kind} if kind else {}), "model": model.cfg.to_dict(), **({"info": info} if info else {})}
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_toy(folder: str | Path = BUILTIN_BASE) -> ToyUNet:
    """Load a toy checkpoint folder; a missing, malformed or mismatched folder is an error naming it."""
    folder = user_path(folder, "toy checkpoint")
    cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
    if not folder.is_dir():
        raise MissingPathError(f"toy checkpoint {folder}: no such folder (give a folder with config.json and "
                               "model.safetensors, a run directory, or '' for the built-in base)")
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise MissingPathError(f"toy checkpoint {folder}: missing {p.name}")
    cfg = _read_arch(cfg_path)
    shapes = _file_shapes(w_path)
    with torch.device("meta"):  # the shapes the config implies, without allocating them
        expected = {k: (tuple(v.shape), v.dtype) for k, v in ToyUNet(cfg).state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [k for k in expected if k in shapes and shapes[k][0] != expected[k][0]]
    if missing or unexpected or wrong:
        raise InputError(f"toy checkpoint {folder}: weights do not match config.json (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, other shape {wrong[:3]}); save it with `dgpo toy pretrain` "
                         "or `dgpo export --merge`")
    not_float = [k for k, (_, dt) in shapes.items() if dt not in FLOAT_DTYPES]
    if not_float:
        raise InputError(f"toy checkpoint {folder}: {not_float[0]} holds {shapes[not_float[0]][1]} values, not floats")
    model = ToyUNet(cfg)
    model.load_state_dict(_load_tensors(w_path))
    return model.eval()


ARCH_LIMITS = {"image_size": (4, 4096), "text_dim": (1, 4096), "text_layers": (0, 64), "max_tokens": (1, 4096),
               "heads": (1, 256)}


def _read_arch(cfg_path: Path) -> ToyModelConfig:
    """config.json's ``model`` section as a ToyModelConfig that builds (types, ranges, divisibility)."""
    where = f"toy checkpoint {cfg_path.parent}: bad config.json"
    try:
        raw = json.loads(cfg_path.read_bytes())
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deeply
        raise InputError(f"{where} ({type(e).__name__}: {short(str(e))})") from None
    arch = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(arch, dict):
        raise InputError(f"{where}: needs a 'model' object with the architecture")
    allowed = {f.name for f in fields(ToyModelConfig)}
    unknown = [k for k in arch if k not in allowed]
    if unknown:
        raise InputError(f"{where}: unknown key model.{short(unknown[0])}; allowed: {sorted(allowed)}")
    ints = {k: v for k, v in arch.items() if k in ARCH_LIMITS}
    for k, v in ints.items():
        lo, hi = ARCH_LIMITS[k]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise InputError(f"{where}: model.{k}={short(v)} must be an integer in [{lo}, {hi}]")
    ch = arch.get("channels", ToyModelConfig.channels)
    if not (isinstance(ch, (list, tuple)) and len(ch) == 3 and all(
            isinstance(c, int) and not isinstance(c, bool) and 8 <= c <= 4096 and c % 8 == 0 for c in ch)):
        raise InputError(f"{where}: model.channels={short(ch)} must be 3 multiples of 8 in [8, 4096]")
    for flag in ("pos_embed", "coords"):
        if not isinstance(arch.get(flag, False), bool):
            raise InputError(f"{where}: model.{flag} must be true or false")
    cfg = ToyModelConfig(**{**arch, "channels": tuple(ch)})
    if cfg.image_size % 4 or any(c % cfg.heads for c in (*cfg.channels, cfg.text_dim)):
        raise InputError(f"{where}: model.image_size must be a multiple of 4 and model.heads must divide "
                         f"model.channels and model.text_dim (got {cfg.image_size}, {cfg.heads}, {cfg.channels}, "
                         f"{cfg.text_dim})")
    return cfg


def _file_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """(shape, safetensors dtype name) of every tensor in a file, from its header (nothing is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (tuple(sl.get_shape()), sl.get_dtype())
            return out
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({short(str(e))})") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({short(str(e))})") from None


FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def with_pos_embed(model: ToyUNet) -> ToyUNet:
    """The same network with (zero) position embeddings added: computes exactly what ``model`` does."""
    if model.cfg.pos_embed:
        return model
    new = ToyUNet(replace(model.cfg, pos_embed=True))
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith((".attn.pos", ".cross.pos")) for k in missing), (missing, unexpected)
    return new.train(model.training)


def checkpoint_kind(folder: str | Path) -> str | None:
    """The ``kind`` a toy checkpoint folder's config.json names (None: an image checkpoint, or unreadable:
    the loader then says what is wrong)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class CheckpointKind:
    """A toy world's checkpoint folder: its ``kind`` in config.json, its name in messages, its
    ``--world``, architecture dataclass and network class, and its shipped base folder."""

    kind: str
    what: str
    world: str
    config: type
    net: type
    builtin: Path

    def save(self, model: torch.nn.Module, folder: str | Path, info: dict | None = None) -> None:
        """``model.safetensors`` + ``config.json`` (``{"kind": kind, "model": {...}, "info": ...}``)."""
        save_toy(model, folder, info, kind=self.kind)

    def load(self, folder: str | Path | None = None) -> torch.nn.Module:
        """A checkpoint folder of this kind (default: the shipped base): :func:`load_kind`."""
        return load_kind(folder, self)


def load_kind(folder: str | Path | None, spec: CheckpointKind) -> torch.nn.Module:
    """A checkpoint folder of the world ``spec`` (default: its shipped base); a missing, malformed or
    mismatched folder is an error naming it."""
    cmd = f"dgpo toy pretrain --world {spec.world}"
    if folder is None and not (spec.builtin / "model.safetensors").is_file():
        raise MissingPathError(f"model.kind={spec.kind}: no {spec.what} base ships yet; pretrain one with "
                               f"`{cmd} --out DIR` and set model.path=DIR/final")
    folder = user_path(folder or spec.builtin, f"{spec.what} checkpoint")
    cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise MissingPathError(f"{spec.what} checkpoint {folder}: missing {p.name} (a folder that `{cmd}` writes)")
    where = f"{spec.what} checkpoint {folder}: bad config.json"
    try:
        raw = json.loads(cfg_path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise InputError(f"{where} ({type(e).__name__}: {short(str(e))})") from None
    arch = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("kind") != spec.kind or not isinstance(arch, dict):
        raise InputError(f"{where}: not a {spec.what} checkpoint (needs \"kind\": \"{spec.kind}\" and a 'model' "
                         "object; an image toy checkpoint is model.kind=toy)")
    allowed = {f.name for f in fields(spec.config)}
    unknown = sorted(set(arch) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown key model.{short(unknown[0])}; allowed: {sorted(allowed)}")
    try:
        cfg = spec.config(**{**arch, "channels": tuple(arch.get("channels", spec.config.channels))})
        model = spec.net(cfg)
        model.load_state_dict(load_file(str(w_path)))
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, SafetensorError, OSError) as e:
        raise InputError(f"{spec.what} checkpoint {folder}: weights do not match config.json "
                         f"({type(e).__name__}: {short(str(e))})") from None
    return model.eval()
