"""Typed configs: nested dataclasses (``schema``) loaded from YAML plus ``key=value`` overrides
(``reading``), built strictly (``build``) and checked across fields (``rules``).

An unknown key, a wrong type or an out-of-range value raises :class:`ConfigError` naming the full
key (``train.lr``) and what is allowed; a key that moved names its new place.
"""

from dgpo.config.loading import DEFAULT_CONFIG, MOVED, dump_yaml, load_config, to_dict
from dgpo.config.schema import (
    AdvantageConfig,
    AWMConfig,
    Config,
    DGPOConfig,
    DPOConfig,
    EvalConfig,
    GRPOConfig,
    ModelConfig,
    NFTConfig,
    RewardConfig,
    RunConfig,
    SamplerConfig,
    TimestepConfig,
    TrainConfig,
)
from dgpo.errors import ConfigError

__all__ = ["DEFAULT_CONFIG", "MOVED", "AWMConfig", "AdvantageConfig", "Config", "ConfigError", "DGPOConfig",
           "DPOConfig", "EvalConfig", "GRPOConfig", "ModelConfig", "NFTConfig", "RewardConfig", "RunConfig",
           "SamplerConfig", "TimestepConfig", "TrainConfig", "dump_yaml", "load_config", "to_dict"]
