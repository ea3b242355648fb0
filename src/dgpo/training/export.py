"""A trained run back as a model (:func:`load_run`; :func:`load_any`: a model for inference from any spec,
a run directory included), and its export:

* LoRA -> ``pytorch_lora_weights.safetensors`` in the layout ``<Pipeline>.load_lora_weights`` reads
  (peft key names without the ``base_model.model.`` prefix, plus the adapter metadata that carries
  lora_alpha; not ``convert_state_dict_to_diffusers``, which drops the ``add_*`` projections);
* ``merge=True`` -> a full diffusers folder with the adapter merged into the transformer (toy: a toy
  checkpoint folder).
"""

from __future__ import annotations

from pathlib import Path

from dgpo.config import ModelConfig, load_config
from dgpo.errors import CheckpointError, InputError, MissingPathError, user_path
from dgpo.models.base import FlowModel
from dgpo.models.loading import apply_lora, load_model, pipeline_kind
from dgpo.training import checkpoints
from dgpo.training.checkpoint_checks import match_tensors
from dgpo.training.policy import Policy, parse_targets

LORA_FILE = "pytorch_lora_weights.safetensors"


def load_run(run_dir: str | Path, weights: str = "ema_slow", checkpoint: str | Path | None = None):
    """(model, policy, config) with the trained weights of a checkpoint (default: the latest)."""
    run = user_path(run_dir, "run directory")
    if not (run / "config.yaml").is_file():
        raise MissingPathError(f"{run} is not a run directory (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    ckpt = user_path(checkpoint, "--checkpoint") if checkpoint else checkpoints.latest_checkpoint(run)
    if ckpt is None or not (ckpt / f"{weights}.safetensors").is_file():
        raise MissingPathError(f"run {run} has no complete checkpoint with {weights}.safetensors (train it until a "
                               "checkpoint is saved, or name one with --checkpoint)")
    if checkpoint and (reason := checkpoints.problem(ckpt)):
        raise CheckpointError(f"checkpoint {ckpt}: {reason}")
    model = load_model(cfg.model)
    policy = Policy(model, cfg.train.lora_rank, cfg.train.lora_alpha, cfg.run.seed,
                    parse_targets(cfg.train.lora_targets))
    tensors = checkpoints.read_tensors(ckpt / f"{weights}.safetensors",
                                       "name another checkpoint of the run with --checkpoint")
    if weights != "policy":  # the EMAs' tensors are "0".."n-1" in the policy's order
        match_tensors(tensors, [(str(i), p) for i, p in enumerate(policy.params)], f"{ckpt / weights}.safetensors")
        tensors = {n: tensors[str(i)] for i, n in enumerate(policy.names)}
    policy.load_state_dict(tensors)
    model.denoiser.eval()
    return model, policy, cfg


def load_run_model(run_dir: str | Path, weights: str = "ema_slow") -> FlowModel:
    """The run's model with the trained weights of its latest checkpoint (``ema_slow`` or ``policy``)."""
    return load_run(run_dir, weights)[0]


def load_any(spec: str = "", lora: str = "", kind: str = "", dtype: str = "fp32", resolution: int = 0) -> FlowModel:
    """A model for inference from any of: '' (the built-in toy base), a run directory (its slow-EMA
    weights), a toy checkpoint folder, a diffusers folder or hub id (``kind`` overrides the family read
    from ``model_index.json``); ``lora``: an exported LoRA applied on top (merged)."""
    path = user_path(spec, "--model") if spec else None
    if path is not None and (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        model = load_run_model(path)
    elif kind == "toy_video" or path is not None and _toy_kind(path) == "toy_video":
        from dgpo.models.toy_video import ToyVideoFlowModel

        model = ToyVideoFlowModel.load(path)
    elif kind == "toy_edit" or path is not None and _toy_kind(path) == "toy_edit":
        from dgpo.models.toy_edit import ToyEditFlowModel

        model = ToyEditFlowModel.load(path)
    elif (path is None or kind == "toy"
          or (path / "config.json").is_file() and not (path / "model_index.json").is_file()):
        from dgpo.models.toy import ToyFlowModel

        model = ToyFlowModel.load(path)
    else:
        kind = kind or pipeline_kind(spec)
        model = load_model(ModelConfig(kind=kind, path=spec, dtype=dtype, resolution=resolution))
    if lora:
        apply_lora(model, lora)
    return model


def _toy_kind(path: Path) -> str:
    """The ``kind`` a toy checkpoint folder's config.json names ("toy" when it names none)."""
    import json

    config = path / "config.json"
    if not config.is_file() or (path / "model_index.json").is_file():
        return ""
    try:
        return str(json.loads(config.read_text()).get("kind", "toy"))
    except (ValueError, OSError, AttributeError):
        return "toy"  # the toy loader reports what is wrong with the file


def lora_state_dict(policy: Policy) -> tuple[dict, dict]:
    """(diffusers-named LoRA tensors, adapter metadata) of a LoRA policy. Where the model has unused
    modules (left out of LoRA with ``exclude_modules``), the metadata names the adapted modules
    themselves: a loader places adapters by the tensors' names, and peft warns about config targets
    that have no tensors and exclusions that exclude nothing."""
    from peft import get_peft_model_state_dict

    sd = {k.removeprefix("base_model.model."): v.detach().contiguous()
          for k, v in get_peft_model_state_dict(policy.peft).items()}
    meta = policy.peft.peft_config["default"].to_dict()
    if meta.get("exclude_modules"):
        meta["target_modules"] = sorted({k.rsplit(".lora_", 1)[0] for k in sd})
        meta["exclude_modules"] = None
    return sd, meta


def export_run(run_dir: str | Path, out: str | Path, merge: bool = False, weights: str = "ema_slow",
               checkpoint: str | Path | None = None) -> Path:
    model, policy, _ = load_run(run_dir, weights, checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = getattr(model, "pipe", None)
    if merge:
        net = policy.peft.merge_and_unload() if policy.lora else model.denoiser
        if pipe is None:
            from dgpo.toy.weights import save_toy

            save_toy(net, out, {"exported_from": str(run_dir), "weights": weights})
        else:
            place = getattr(model, "place_denoiser", None)  # Wan2.2: its two experts back into their slots
            place(net) if place is not None else setattr(pipe, "transformer", net)
            pipe.vae.to(net.dtype)  # decoded in fp32 in dgpo; saved in the dtype the pipeline was loaded in
            pipe.save_pretrained(out)
        return out
    if not policy.lora:
        raise InputError(f"run {run_dir} fine-tuned all weights (train.lora_rank=0): export it with --merge")
    sd, meta = lora_state_dict(policy)
    if pipe is None:
        policy.peft.save_pretrained(out)  # the toy model is not a diffusers pipeline: peft's own format
        return out
    if hasattr(model, "save_lora"):  # Wan2.2: a second file for transformer_2
        return model.save_lora(out, sd, meta, LORA_FILE)
    type(pipe).save_lora_weights(out, transformer_lora_layers=sd, transformer_lora_adapter_metadata=meta,
                                 weight_name=LORA_FILE)
    return out / LORA_FILE
