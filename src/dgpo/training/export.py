"""Loading a trained run back as a :class:`FlowModel` (its latest checkpoint, slow-EMA weights)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from dgpo.config import load_config
from dgpo.models.base import FlowModel
from dgpo.models.loading import load_model
from dgpo.training.io import latest_checkpoint
from dgpo.training.policy import Policy, parse_targets


def load_run_model(run_dir: str | Path, weights: str = "ema_slow") -> FlowModel:
    """The run's model with the trained weights of its latest checkpoint (``ema_slow`` or ``policy``)."""
    run = Path(run_dir)
    cfg = load_config(run / "config.yaml")
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise FileNotFoundError(f"run {run} has no checkpoint")
    model = load_model(cfg.model)
    policy = Policy(model, cfg.train.lora_rank, cfg.train.lora_alpha, cfg.run.seed,
                    parse_targets(cfg.train.lora_targets))
    tensors = load_file(str(ckpt / f"{weights}.safetensors"))
    if weights == "policy":
        policy.load_state_dict(tensors)
    else:
        policy.load_state_dict({n: tensors[str(i)] for i, n in enumerate(policy.names)})
    model.denoiser.eval()
    return model
