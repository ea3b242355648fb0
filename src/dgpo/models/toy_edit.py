"""Adapter of the toy editing UNet (:mod:`dgpo.toy.edit_model`) to the :class:`FlowModel` interface: pixels
are the latents, [B, 3, S, S] in [-1, 1]; a row's condition is its instruction and its source scene drawn
(``encode_metas``), the source kept in CFG's unconditional branch as an editing pipeline keeps it."""

from __future__ import annotations

from pathlib import Path

import torch

from dgpo.errors import InputError, short
from dgpo.models.base import Cond
from dgpo.models.toy import ToyAdapter
from dgpo.toy.edit_grammar import check_scene
from dgpo.toy.edit_model import ToyEditUNet, load_edit_toy, scene_images


class ToyEditFlowModel(ToyAdapter):
    """The toy editing world's model; ``path`` is a toy editing checkpoint folder (default: the shipped
    editing base). Rows are those of ``toy_edit:train`` / ``toy_edit:test`` (each with its
    ``source_scene``)."""

    @staticmethod
    def load_net(path: str | Path | None) -> ToyEditUNet:
        return load_edit_toy(path)

    @torch.no_grad()
    def encode_metas(self, metas: list[dict]) -> Cond:
        """The instruction's encoding plus ``source`` [B, 3, S, S]: each row's ``source_scene`` drawn."""
        for m in metas:
            if "source_scene" not in m:
                raise InputError(f"model.kind=toy_edit edits a source scene: row {short(m.get('prompt'))} has no "
                                 "'source_scene' (use the toy_edit:train / toy_edit:test prompts)")
            check_scene(m["source_scene"], f"row {short(m.get('prompt'))}: source_scene")
        cond = self.encode_prompts([m["prompt"] for m in metas])
        return {**cond, "source": scene_images([m["source_scene"] for m in metas]).to(self.device)}

    def source_images(self, metas: list[dict]) -> torch.Tensor:
        """Each row's source scene as an image [B, 3, S, S] in [0, 1] (the first column of the trainer's
        before / after comparison)."""
        return self.decode(scene_images([m["source_scene"] for m in metas]))

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        if "source" not in cond:
            raise InputError("model.kind=toy_edit needs each row's source image: encode rows with encode_metas "
                             "(dgpo.models.base.encode_rows), not bare prompts")
        return super().velocity(x_t, t, cond)
