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


PIPELINE_KINDS = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux", "SanaPipeline": "sana"}


def pipeline_kind(path: str) -> str:
    """The adapter family of a diffusers folder or hub id, from its ``model_index.json``."""
    from pathlib import Path

    from diffusers import DiffusionPipeline

    if Path(path).expanduser().exists() or path.startswith((".", "/", "~")) or path.count("/") != 1:
        if not (Path(path).expanduser() / "model_index.json").is_file():
            raise FileNotFoundError(f"--model {path!r}: not a run directory, toy checkpoint folder or diffusers "
                                    "folder (no config.yaml, config.json or model_index.json)")
    try:
        name = DiffusionPipeline.load_config(path).get("_class_name", "")
    except (OSError, ValueError) as e:
        raise ValueError(f"--model {path!r}: not a diffusers pipeline folder or hub id ({e})") from None
    if name not in PIPELINE_KINDS:
        raise ValueError(f"--model {path!r}: pipeline {name!r} has no adapter; supported: {sorted(PIPELINE_KINDS)}")
    return PIPELINE_KINDS[name]


def load_any(spec: str = "", lora: str = "", kind: str = "", dtype: str = "fp32", resolution: int = 0) -> FlowModel:
    """A model for inference from any of: '' (the built-in toy base), a run directory (its slow-EMA
    weights), a toy checkpoint folder, a diffusers folder or hub id (``kind`` overrides the family read
    from ``model_index.json``); ``lora``: an exported LoRA applied on top (merged)."""
    from pathlib import Path

    path = Path(spec) if spec else None
    if path is not None and (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        from dgpo.training.export import load_run_model

        model = load_run_model(path)
    elif path is None or kind == "toy" or (path / "config.json").is_file() and not (path / "model_index.json").is_file():
        from dgpo.models.toy import ToyFlowModel

        model = ToyFlowModel.load(path)
    else:
        kind = kind or pipeline_kind(spec)
        model = load_model(ModelConfig(kind=kind, path=spec, dtype=dtype, resolution=resolution))
    if lora:
        apply_lora(model, lora)
    return model


def apply_lora(model: FlowModel, lora: str) -> None:
    """Merge an exported LoRA into ``model``: diffusers' ``pytorch_lora_weights.safetensors`` (a file or
    its folder) for pipelines, a peft adapter folder for the toy model."""
    from pathlib import Path

    p = Path(lora)
    if not p.exists():
        raise FileNotFoundError(f"--lora {lora!r}: no such file or folder")
    pipe = getattr(model, "pipe", None)
    if pipe is None:
        from peft import PeftModel

        if not (p / "adapter_config.json").is_file():
            raise ValueError(f"--lora {lora!r}: a toy LoRA is a peft folder with adapter_config.json "
                             "(as `dgpo export` writes for toy runs)")
        model.denoiser = PeftModel.from_pretrained(model.denoiser, str(p)).merge_and_unload()
        return
    folder, name = (p.parent, p.name) if p.is_file() else (p, "pytorch_lora_weights.safetensors")
    if not (folder / name).is_file():
        raise FileNotFoundError(f"--lora {lora!r}: no {name} (export a run with `dgpo export RUN`)")
    try:
        pipe.load_lora_weights(str(folder), weight_name=name, adapter_name="dgpo_lora")
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"--lora {lora!r}: cannot load it into {type(pipe).__name__}: {e}") from None
    pipe.fuse_lora(adapter_names=["dgpo_lora"])
    pipe.unload_lora_weights()
    model.denoiser = pipe.transformer
