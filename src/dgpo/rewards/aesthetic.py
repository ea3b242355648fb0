"""LAION aesthetic predictor v2 (improved-aesthetic-predictor, Schuhmann et al.; Apache-2.0).

A five-layer MLP (768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropout between the first four, no
activations in the released ``*linearMSE.pth`` heads) on the L2-normalised CLIP ViT-L/14 image
embedding; about 1-10, higher is more aesthetic. The weights are read from a file
(``reward.aesthetic_path``): the official ``sac+logos+ava1-l14-linearMSE.pth`` (3.7 MB, from
github.com/christophschuhmann/improved-aesthetic-predictor) loads as is; torch files are read with
``weights_only=True`` (no pickled code runs), ``.safetensors`` files with safetensors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from dgpo.errors import InputError, MissingPathError
from dgpo.rewards.clip import shared_clip

LINEARS = (0, 2, 4, 6, 7)  # indices of the Linear layers in the official nn.Sequential
DROPOUTS = {1: 0.2, 3: 0.2, 5: 0.1}


def load_state(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file, never unpickling code."""
    p = Path(path)
    if not p.is_file():
        raise MissingPathError(f"{key}: {p} is not a file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: one clear message
        raise InputError(f"{key}: cannot read {p} as a torch state dict (weights only): {e}") from None
    if not isinstance(state, dict):
        raise InputError(f"{key}: {p} holds a {type(state).__name__}, not a state dict")
    return state.get("state_dict", state)


def aesthetic_mlp(state: dict[str, torch.Tensor], source: str) -> nn.Sequential:
    """The official MLP (its layer indices and dropouts), sized from the weights and loaded strictly."""
    try:
        shapes = [tuple(state[f"layers.{i}.weight"].shape) for i in LINEARS]
    except KeyError as e:
        raise InputError(f"{source}: not a LAION aesthetic MLP (missing {e.args[0]!r}; "
                         f"expected layers.{{0,2,4,6,7}}.weight/bias)") from None
    if shapes[-1][0] != 1 or any(shapes[i][0] != shapes[i + 1][1] for i in range(len(shapes) - 1)):
        raise InputError(f"{source}: layer shapes {shapes} do not chain to one output")
    layers: list[nn.Module] = []
    for i in range(LINEARS[-1] + 1):
        if i in LINEARS:
            out_f, in_f = shapes[LINEARS.index(i)]
            layers.append(nn.Linear(in_f, out_f))
        else:
            layers.append(nn.Dropout(DROPOUTS[i]))
    mlp = nn.Sequential(*layers)
    try:
        mlp.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise InputError(f"{source}: {e}") from None
    return mlp.eval().requires_grad_(False)


class AestheticReward:
    def __init__(self, weights_path: str, clip_path: str = "", device: str | torch.device = "cpu"):
        if not weights_path:
            raise InputError("reward.aesthetic_path: the aesthetic reward needs the LAION MLP weights "
                             "(sac+logos+ava1-l14-linearMSE.pth from "
                             "christophschuhmann/improved-aesthetic-predictor)")
        state = load_state(weights_path, "reward.aesthetic_path")
        self.mlp = aesthetic_mlp(state, f"reward.aesthetic_path {weights_path}")
        self.clip = shared_clip(clip_path, device)
        if self.mlp[0].in_features != self.clip.dim:
            raise InputError(f"reward.aesthetic_path: the MLP takes {self.mlp[0].in_features}-d embeddings "
                             f"but the CLIP of reward.clip_path gives {self.clip.dim}-d "
                             "(the MLP needs CLIP ViT-L/14)")
        self.mlp.to(self.clip.device)
        digest = hashlib.sha256(Path(weights_path).read_bytes()).hexdigest()[:12]
        self.version = f"aesthetic-mlp sha256:{digest}/{self.clip.version}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        return self.mlp(self.clip.images(images)).squeeze(-1).float().cpu()
