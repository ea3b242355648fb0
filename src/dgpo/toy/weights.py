"""Saving and loading toy checkpoints: ``model.safetensors`` + ``config.json`` in a folder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file, save_file

from dgpo.toy.model import ToyModelConfig, ToyUNet

BUILTIN_BASE = Path(__file__).parent / "base"


def save_toy(model: ToyUNet, folder: str | Path, info: dict | None = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    meta = {"model": model.cfg.to_dict(), **({"info": info} if info else {})}
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_toy(folder: str | Path = BUILTIN_BASE) -> ToyUNet:
    """Load a toy checkpoint folder; clear errors for a missing or malformed folder."""
    folder = Path(folder)
    cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"toy checkpoint {folder}: missing {p.name}")
    try:
        raw = json.loads(cfg_path.read_text())["model"]
        raw["channels"] = tuple(raw["channels"])
        cfg = ToyModelConfig(**raw)
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"toy checkpoint {folder}: bad config.json ({e})") from None
    model = ToyUNet(cfg)
    missing, unexpected = model.load_state_dict(load_file(str(w_path)), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"toy checkpoint {folder}: weights do not match config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()


def with_pos_embed(model: ToyUNet) -> ToyUNet:
    """The same network with (zero) position embeddings added: computes exactly what ``model`` does."""
    if model.cfg.pos_embed:
        return model
    new = ToyUNet(replace(model.cfg, pos_embed=True))
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith((".attn.pos", ".cross.pos")) for k in missing), (missing, unexpected)
    return new.train(model.training)
