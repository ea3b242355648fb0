"""Build a :class:`FlowModel` from ``ModelConfig``, by the family table of ``dgpo.models.families``; merge an
exported LoRA into one. (A model from any spec, a run directory included: ``dgpo.training.export.load_any``.)"""

from __future__ import annotations

import importlib
import math

from dgpo.config import ModelConfig
from dgpo.errors import InputError, MissingPathError, short, user_path
from dgpo.models.base import FlowModel
from dgpo.models.families import FAMILIES, MODEL_KINDS, PIPELINE_KINDS


def load_model(cfg: ModelConfig) -> FlowModel:
    if cfg.kind == "toy":
        from dgpo.models.toy import ToyFlowModel

        return ToyFlowModel.load(cfg.path or None)
    if cfg.kind == "toy_video":
        from dgpo.models.toy_video import ToyVideoFlowModel

        return ToyVideoFlowModel.load(cfg.path or None)
    if cfg.kind == "toy_edit":
        from dgpo.models.toy_edit import ToyEditFlowModel

        return ToyEditFlowModel.load(cfg.path or None)
    if cfg.kind not in FAMILIES:
        raise ValueError(f"model.kind={cfg.kind!r} has no adapter; allowed: {list(MODEL_KINDS)}")
    module, cls, _ = FAMILIES[cfg.kind]
    return getattr(importlib.import_module(module), cls).load(cfg)


def pipeline_kind(path: str) -> str:
    """The adapter family of a diffusers folder or hub id, from its ``model_index.json``."""
    from pathlib import Path

    from diffusers import DiffusionPipeline

    if Path(path).expanduser().exists() or path.startswith((".", "/", "~")) or path.count("/") != 1:
        if not (Path(path).expanduser() / "model_index.json").is_file():
            raise MissingPathError(f"--model {path!r}: not a run directory, toy checkpoint folder or diffusers "
                                    "folder (no config.yaml, config.json or model_index.json)")
    try:
        name = DiffusionPipeline.load_config(path).get("_class_name", "")
    except (OSError, ValueError) as e:
        raise InputError(f"--model {path!r}: not a diffusers pipeline folder or hub id ({e})") from None
    if name not in PIPELINE_KINDS:
        raise InputError(f"--model {path!r}: pipeline {name!r} has no adapter; supported: {sorted(PIPELINE_KINDS)}")
    return PIPELINE_KINDS[name]


def apply_lora(model: FlowModel, lora: str) -> None:
    """Merge an exported LoRA into ``model``: diffusers' ``pytorch_lora_weights.safetensors`` (a file or
    its folder) for pipelines, a peft adapter folder for the toy model. Weights are read from
    safetensors only (a pickled ``.bin`` is refused: loading never runs code from a file)."""
    p = user_path(lora, "--lora")
    if not p.exists():
        raise MissingPathError(f"--lora {lora!r}: no such file or folder")
    pipe = getattr(model, "pipe", None)
    if pipe is None:
        _apply_peft_lora(model, p, lora)
        return
    folder, name = (p.parent, p.name) if p.is_file() else (p, "pytorch_lora_weights.safetensors")
    if not name.endswith(".safetensors"):
        raise InputError(f"--lora {lora!r}: only .safetensors LoRA files are read (no pickle); export the run "
                         "again with `dgpo export RUN`")
    # (pipeline component, file, load_lora_weights arguments): one file, or a family's own (Wan2.2: two experts)
    parts = getattr(model, "lora_parts", lambda n: [("transformer", n, {})])(name)
    for _, file, _ in parts:
        if not (folder / file).is_file():
            raise MissingPathError(f"--lora {lora!r}: no {file} (export a run with `dgpo export RUN`)")
    from safetensors import SafetensorError

    try:
        for _, file, kwargs in parts:
            pipe.load_lora_weights(str(folder), weight_name=file, adapter_name="dgpo_lora", **kwargs)
    except (ValueError, KeyError, RuntimeError, TypeError, IndexError, OSError, SafetensorError) as e:
        pipe.unload_lora_weights()  # a half-loaded adapter: the pipeline as it was
        raise InputError(f"--lora {lora!r}: cannot load it into {type(pipe).__name__} "
                         f"({type(e).__name__}: {short(str(e))}); is it a LoRA of this model?") from None
    if len(parts) == 1:
        pipe.fuse_lora(adapter_names=["dgpo_lora"])
        pipe.unload_lora_weights()
        model.denoiser = pipe.transformer
    else:  # fused in place: the experts' wrapper (model.denoiser) holds the same networks
        pipe.fuse_lora(components=[c for c, _, _ in parts], adapter_names=["dgpo_lora"])
        pipe.unload_lora_weights()


LORA_MAX_RANK = 4096


def _apply_peft_lora(model: FlowModel, p, lora: str) -> None:
    """A peft adapter folder (adapter_config.json + adapter_model.safetensors), merged into the denoiser."""
    import json

    from peft import PeftModel
    from safetensors import SafetensorError

    cfg_file, weights = p / "adapter_config.json", p / "adapter_model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise InputError(f"--lora {lora!r}: a toy LoRA is a peft folder with adapter_config.json and "
                         "adapter_model.safetensors (as `dgpo export` writes for toy runs)")
    try:
        cfg = json.loads(cfg_file.read_bytes())
    except (ValueError, RecursionError) as e:
        raise InputError(f"--lora {lora!r}: adapter_config.json is not JSON ({type(e).__name__})") from None
    _check_lora_config(cfg, lora)
    try:  # peft reads the user's folder: what it raises here is the folder's fault
        model.denoiser = PeftModel.from_pretrained(model.denoiser, str(p)).merge_and_unload()
    except (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError, OSError, SafetensorError,
            NotImplementedError, ImportError) as e:  # a variant peft cannot merge (aLoRA) or needs a package for
        raise InputError(f"--lora {lora!r}: cannot load it into the toy model ({type(e).__name__}: "
                         f"{short(str(e))}); is it a LoRA of this model, as `dgpo export` writes it?") from None


def _check_lora_config(cfg, lora: str) -> None:
    """The adapter_config.json fields that size the adapter, checked before peft allocates it."""
    bad = f"--lora {lora!r}: adapter_config.json"
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise InputError(f"{bad} is not a peft LoRA config (peft_type LORA)")
    patterns = {k: cfg.get(k) or {} for k in ("rank_pattern", "alpha_pattern")}
    if not all(isinstance(v, dict) for v in patterns.values()):
        raise InputError(f"{bad}: rank_pattern and alpha_pattern must be objects (module pattern -> value)")
    ranks = [cfg.get("r", 8), *patterns["rank_pattern"].values()]
    alphas = [cfg.get("lora_alpha", 8), *patterns["alpha_pattern"].values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= LORA_MAX_RANK for r in ranks):
        raise InputError(f"{bad}: r (and rank_pattern) must be integers in [1, {LORA_MAX_RANK}], got {short(ranks)}")
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in alphas):
        raise InputError(f"{bad}: lora_alpha (and alpha_pattern) must be finite numbers, got {short(alphas)}")
    if cfg.get("megatron_config") is not None:  # peft would import the module named by megatron_core
        raise InputError(f"{bad}: megatron_config must be null (dgpo's LoRAs are plain peft LoRAs)")
    targets = cfg.get("target_modules")
    names = isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    if not (isinstance(targets, str) or names):
        raise InputError(f"{bad}: target_modules must be a module name pattern or a list of names")
