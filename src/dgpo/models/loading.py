"""Build a :class:`FlowModel` from ``ModelConfig`` (the one place that maps family names to adapters)."""

from __future__ import annotations

from dgpo.config import ModelConfig
from dgpo.models.base import FlowModel


def load_model(cfg: ModelConfig) -> FlowModel:
    if cfg.kind == "toy":
        from dgpo.models.toy import ToyFlowModel

        return ToyFlowModel.load(cfg.path or None)
    raise ValueError(f"model.kind={cfg.kind!r} has no adapter; allowed: 'toy'")
