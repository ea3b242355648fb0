"""Trainable wrapper around a :class:`FlowModel`: LoRA through peft (reference = adapter disabled) or
full fine-tuning (reference = a frozen copy).

The reference is entered for every training timestep. peft's ``disable_adapter()`` walks every module
of the network and flips ``requires_grad`` on every LoRA tensor both ways, host time that grows with the
module count (docs/results/performance.md); without grad only the layers' switch matters, so the LoRA
layers are listed once and their switch is flipped directly (checked at start-up; peft's context is used
under grad or if the switch is not where this expects it).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig, get_peft_model

from dgpo.models.base import FlowModel
from dgpo.training.fsdp import copy_full_


def parse_targets(spec: str) -> list[str]:
    """``"to_q, to_k"`` -> ["to_q", "to_k"]; "" -> [] (the model's own list)."""
    return [t.strip() for t in spec.split(",") if t.strip()]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _targets_under(net: torch.nn.Module, prefixes: tuple[str, ...], targets: list[str]) -> list[str] | None:
    """The modules LoRA would adapt inside ``prefixes`` (the model's ``unused_modules``), which it skips:
    they never get a gradient, and DDP needs every trained parameter to get one."""
    hits = [n for n, _ in net.named_modules()
            if _under(n, prefixes) and any(n == t or n.endswith("." + t) for t in targets)]
    return hits or None


class Policy:
    def __init__(self, model: FlowModel, lora_rank: int = 64, lora_alpha: float = 128.0, seed: int = 0,
                 lora_targets: list[str] | None = None):
        self.model = model
        self.lora = lora_rank > 0
        torch.manual_seed(seed)  # LoRA init is random (gaussian A, zero B)
        unused = tuple(getattr(model, "unused_modules", list)())
        if self.lora:
            targets = lora_targets or model.lora_targets
            cfg = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, init_lora_weights="gaussian",
                             target_modules=targets, exclude_modules=_targets_under(model.denoiser, unused, targets))
            model.denoiser.requires_grad_(False)
            model.denoiser = get_peft_model(model.denoiser, cfg)
            self.peft = model.denoiser  # kept: the trainer may wrap model.denoiser in DDP
            self._frozen = None
            self._switches = _adapter_switches(self.peft)
            self._probe = self._switches[0] if self._switches else _first_tuner_layer(self.peft)
        else:
            self._frozen = copy.deepcopy(model.denoiser).requires_grad_(False)
            self._probe = None
            for name, p in model.denoiser.named_parameters():
                p.requires_grad_(not name.startswith(model.frozen_prefixes) and not _under(name, unused))
        self.collect()

    def collect(self) -> None:
        """(Re)read the trainable parameters (after sharding replaced them with shards)."""
        named = [(n, p) for n, p in self.model.denoiser.named_parameters() if p.requires_grad]
        self.names, self.params = [n for n, _ in named], [p for _, p in named]

    def shard(self, sharding) -> None:
        """FSDP: shard the live network and full fine-tuning's frozen copy alike (``Sharding.shard``);
        the model's ``frozen_prefixes`` (encoders called on their own) stay whole."""
        keep = tuple(self.model.frozen_prefixes)
        sharding.shard(self.model.denoiser, keep)
        if self._frozen is not None:
            sharding.shard(self._frozen, keep)
        self.collect()

    @contextmanager
    def reference(self) -> Iterator[None]:
        """The frozen base model: LoRA disabled, or the frozen copy swapped in."""
        if self.lora:
            if torch.is_grad_enabled() or not self._switches:
                with self.peft.disable_adapter():
                    yield
            else:
                with _switched_off(self._switches):
                    yield
        else:
            live = self.model.denoiser
            self.model.denoiser = self._frozen
            try:
                yield
            finally:
                self.model.denoiser = live

    def mode_key(self) -> tuple:
        """Which weights a forward reads now, beyond their values: the network (full fine-tuning swaps in
        its frozen copy) and the LoRA switch (a CUDA graph of the rollouts records one of them)."""
        return id(self.model.denoiser), None if self._probe is None else bool(self._probe.disable_adapters)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by name (shards under FSDP: ``Sharding.gather`` makes them whole)."""
        return {n: p.detach().contiguous() for n, p in zip(self.names, self.params)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """The trainable tensors of :meth:`state_dict`; other names, shapes or non-float dtypes raise a
        CheckpointError before any weight changes."""
        from dgpo.training.checkpoint_checks import match_tensors

        match_tensors(state, list(zip(self.names, self.params)), "checkpoint policy weights")
        with torch.no_grad():
            for n, p in zip(self.names, self.params):
                copy_full_(p, state[n])


def _first_tuner_layer(net):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return next((m for m in net.modules() if isinstance(m, BaseTunerLayer)), None)


def _adapter_switches(net) -> list:
    """The LoRA layers whose ``_disable_adapters`` flag peft's ``disable_adapters`` property reads, or []
    where that does not hold (another peft version: :meth:`Policy.reference` then uses peft's context)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = list(net.modules())
    layers = [m for m in modules if isinstance(m, BaseTunerLayer)]
    if not layers or not all(isinstance(getattr(m, "_disable_adapters", None), bool) for m in layers):
        return []
    aux = ("AuxiliaryTrainingWrapper", "ModulesToSaveWrapper")  # modules_to_save, trainable tokens
    if any(c.__name__ in aux for m in modules for c in type(m).__mro__):
        return []  # peft's context switches those too (dgpo's LoRA config sets neither)
    probe, was = layers[0], layers[0]._disable_adapters
    try:
        probe._disable_adapters = not was
        works = probe.disable_adapters is (not was)
    finally:
        probe._disable_adapters = was
    return layers if works else []


@contextmanager
def _switched_off(layers: list) -> Iterator[None]:
    before = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, was in zip(layers, before):
            m._disable_adapters = was
