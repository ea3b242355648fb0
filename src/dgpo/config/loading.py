"""Defaults <- a YAML file <- ``key=value`` overrides -> a validated :class:`Config`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from dgpo.config.build import build
from dgpo.config.reading import read_yaml, set_override
from dgpo.config.rules import check
from dgpo.config.schema import Config
from dgpo.errors import ConfigError, user_path

DEFAULT_CONFIG = Path(__file__).parents[1] / "configs" / "toy_demo.yaml"

# old key -> its new place: options every algorithm reads left the dgpo section
MOVED = {
    "dgpo.timestep_mode": "timesteps.mode", "dgpo.trunc_steps": "timesteps.trunc_steps",
    "dgpo.num_train_timesteps": "timesteps.count", "dgpo.t_min": "timesteps.t_min",
    "dgpo.t_min_end": "timesteps.t_min_end", "dgpo.adv_std": "advantages.std",
    "dgpo.adv_clip_max": "advantages.clip_max", "reward.advantages": "advantages.combine",
    "dgpo.text_dropout": "train.text_dropout",
}


def check_moved(data: dict) -> None:
    """A key that moved is a clear error naming its new place (never silently ignored)."""
    for old, new in MOVED.items():
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            raise ConfigError(f"{old} moved to {new}: write {new}={data[section][key]!r} "
                              f"(in YAML: '{new.split('.')[0]}:' then '  {new.split('.')[1]}: ...')")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (None: the embedded toy demo) <- ``key=value`` overrides, then validation.

    Use ``path=""`` for the bare dataclass defaults (the official recipe's values).
    """
    data: dict = {}
    path = DEFAULT_CONFIG if path is None else (path or None)
    if path is not None:
        data = read_yaml(user_path(path, "config file"))
    for item in overrides or []:
        set_override(data, item)
    check_moved(data)
    cfg = build(Config, data, "")
    check(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
