"""What every diffusers-backed adapter shares: loading a pipeline folder (or hub id) with clear errors,
frozen text encoders and VAE, a per-prompt text-embedding cache, dtype/device handling, optional
offloading and gradient checkpointing. A family file (sd3.py, flux.py, sana.py, qwenimage.py) adds the
transformer call, the text encoding and the latent layout. The pipeline's ``__call__`` is never used.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import ClassVar

import torch

from dgpo.errors import InputError, MissingPathError
from dgpo.models.base import Cond
from dgpo.schedules import Grid, rollout_grid

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def load_pipeline(pipeline_cls, path: str, dtype: str):
    """``pipeline_cls.from_pretrained`` on a local folder or a hub id, with errors naming the problem."""
    if not path:
        raise InputError(f"model.path is required for {pipeline_cls.__name__} (a diffusers folder or hub id)")
    p = Path(path).expanduser()
    local = p.exists() or path.startswith((".", "/", "~")) or path.count("/") != 1
    if local:
        if not p.is_dir():
            raise MissingPathError(f"model.path {path!r}: no such folder (expected a diffusers pipeline folder)")
        if not (p / "model_index.json").is_file():
            raise InputError(f"model.path {path!r} is not a diffusers pipeline folder: no model_index.json")
    try:
        # official: the VAE in fp32 whatever the inference dtype (train_sd3_dgpo.py)
        dtypes = {"default": DTYPES[dtype], "vae": torch.float32}
        return pipeline_cls.from_pretrained(str(p) if local else path, dtype=dtypes)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"model.path {path!r}: cannot load it as {pipeline_cls.__name__}: {e}") from None


class DiffusersFlowModel:
    """Base of the diffusers adapters; subclasses set ``lora_targets`` and implement ``_encode``,
    ``velocity``, ``latent_shape``."""

    lora_targets: ClassVar[list[str]] = []
    repeated_blocks: ClassVar[list[str]] = []
    frozen_prefixes: tuple[str, ...] = ()
    default_max_sequence_length = 256

    def __init__(self, pipe, cfg):
        self.pipe, self.cfg = pipe, cfg
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()
        vae = getattr(pipe, "vae", None)  # official: the VAE decodes in fp32 whatever model.dtype
        if vae is not None and next(vae.parameters()).dtype != torch.float32:
            vae.to(torch.float32)
        self.scheduler_config = dict(pipe.scheduler.config)  # the family's own, as loaded
        self.denoiser = pipe.transformer.requires_grad_(False)
        # read from here, not through self.denoiser: training forwards swap in a DDP wrapper, which has
        # neither .config nor .dtype
        self.net_config = pipe.transformer.config
        if cfg.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        self.max_sequence_length = cfg.max_sequence_length or self.default_max_sequence_length
        self.resolution = cfg.resolution or self._native_resolution()
        self.device = torch.device("cpu")
        self._cache: OrderedDict[str, Cond] = OrderedDict()
        self._resident: set[str] = set()  # offloaded parts now on the device (model.offload)
        self._dtypes: dict[int, tuple[torch.dtype, torch.dtype]] = {}

    # -- FlowModel
    def to(self, device) -> DiffusersFlowModel:
        self.device = torch.device(device)
        self.denoiser.to(self.device)
        if not self.cfg.offload:
            self._aux_to(self.device)
        return self

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        """Text embeddings, computed once per distinct prompt and cached in host memory, the
        ``model.text_cache`` most recently used prompts, in each process (SD3 takes 1.7 MB a prompt in
        bf16, FLUX 4.2 MB: a cache on the GPU would grow by gigabytes over a long run's distinct training
        prompts; the copy of an epoch's few prompts costs nothing next to a rollout). The encoders run
        in their own dtype, outside any autocast (official: bf16 encoders, encoded before the autocast
        region), so an embedding does not depend on where it was first asked for."""
        distinct = list(dict.fromkeys(prompts))
        todo = [p for p in distinct if p not in self._cache]
        fresh = {}
        if todo:
            self._need(*TEXT_ENCODERS)
            with torch.autocast(self.device.type, enabled=False):
                enc = {k: v.to("cpu") for k, v in self._encode(todo).items()}
            # own storage per entry: a view would keep its whole encoded batch alive
            fresh = {p: {k: v.clone() for k, v in self._cache_entry(enc, i).items()} for i, p in enumerate(todo)}
        entries = [fresh[p] if p in fresh else self._cache[p] for p in distinct]
        for p in distinct:  # most recently used last; the oldest go first
            self._cache[p] = fresh.get(p) or self._cache.pop(p)
        while len(self._cache) > self.cfg.text_cache:
            self._cache.popitem(last=False)
        where = {p: i for i, p in enumerate(distinct)}  # each distinct prompt crosses to the device once
        rows = torch.tensor([where[p] for p in prompts], device=self.device)
        return {k: v.to(self.device)[rows] for k, v in self._collate(entries).items()}

    def _cache_entry(self, enc: Cond, i: int) -> Cond:
        """What the cache keeps of prompt ``i`` of an encoded batch."""
        return {k: v[i : i + 1] for k, v in enc.items()}

    def _collate(self, entries: list[Cond]) -> Cond:
        """Cached entries -> one batch condition."""
        return {k: torch.cat([e[k] for e in entries]) for k in entries[0]}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self._need("vae")
        z = latents.to(vae.dtype) / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        images = vae.decode(z, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def release_aux(self) -> None:
        """``model.offload``: the text encoders and the VAE back to the CPU. The trainer calls it before
        each optimizer step's training forwards, where memory peaks; an encode or decode brings back
        what it needs and it stays until then, so an eval's batches or a rollout's chunks move each part
        once, not once per call."""
        for name in sorted(self._resident):
            getattr(self.pipe, name).to("cpu")
        self._resident.clear()

    def default_shift(self) -> float:
        cfg = self.scheduler_config
        return float(cfg.get("flow_shift") or cfg.get("shift") or 1.0)

    def rollout_grid(self, method: str, steps: int, shift: float) -> Grid:
        """The family scheduler's grid: its own config where it is of the method's kind (SD3's Euler,
        Sana's DPM-Solver), else diffusers' Euler / the official flow DPM-Solver config, with ``shift``."""
        return rollout_grid(method, steps, shift, self.scheduler_config)

    # -- helpers
    def _aux_to(self, device) -> None:
        for name in (*TEXT_ENCODERS, "vae"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.to(device)

    def _need(self, *names: str):
        """``model.offload``: the named parts on the model's device until ``release_aux`` (without
        offloading they live there already); returns the last one."""
        module = None
        for name in names:
            module = getattr(self.pipe, name, None)
            if module is not None and self.cfg.offload and name not in self._resident:
                module.to(self.device)
                self._resident.add(name)
        return module

    def _native_resolution(self) -> int:
        return int(self.net_config.sample_size) * int(self.pipe.vae_scale_factor)

    def _latent_hw(self) -> int:
        return self.resolution // int(self.pipe.vae_scale_factor)

    def _compute_dtype(self) -> torch.dtype:
        """The denoiser's dtype (diffusers' ``ModelMixin.dtype``), looked up once per network and first
        parameter dtype: diffusers walks every module for casting hooks on each lookup, host time in
        every forward (docs/results/performance.md). dgpo casts whole networks (it does not use
        diffusers' layerwise casting, which this key would not see). A DDP wrapper (the
        training forwards) is looked through."""
        net = self.denoiser
        if isinstance(net, torch.nn.parallel.DistributedDataParallel):
            net = net.module
        first = next(net.parameters()).dtype
        known = self._dtypes.get(id(net))
        if known is None or known[0] != first:
            known = self._dtypes[id(net)] = (first, net.dtype)
        return known[1]

    def _time(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """The timestep [n] as float32 (exact for the DPM grid's integers, which the transformers'
        sinusoidal embeddings turn into floats anyway)."""
        return t.to(self.device, torch.float32).expand(n) if t.dim() == 0 else t.to(self.device, torch.float32)

    def _encode(self, prompts: list[str]) -> Cond:  # pragma: no cover - abstract
        raise NotImplementedError

