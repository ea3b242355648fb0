"""Build a :class:`FlowModel` from ``ModelConfig`` (the one place that maps family names to adapters)."""

from __future__ import annotations

from dgpo.config import ModelConfig
from dgpo.models.base import FlowModel


def load_model(cfg: ModelConfig) -> FlowModel:
    if cfg.kind == "toy":
        from dgpo.models.toy import ToyFlowModel

        return ToyFlowModel.load(cfg.path or None)
    if cfg.kind == "sd3":
        from dgpo.models.sd3 import SD3FlowModel

        return SD3FlowModel.load(cfg)
    if cfg.kind == "flux":
        from dgpo.models.flux import FluxFlowModel

        return FluxFlowModel.load(cfg)
    if cfg.kind == "sana":
        from dgpo.models.sana import SanaFlowModel

        return SanaFlowModel.load(cfg)
    raise ValueError(f"model.kind={cfg.kind!r} has no adapter; allowed: 'toy', 'sd3', 'flux', 'sana'")
