"""Fully sharded training (PyTorch's FSDP2, ``fully_shard``) for full fine-tuning of models that do
not fit one device, configured by accelerate's FSDP settings.

When it is on: ``accelerate launch`` with an FSDP config (``distributed_type: FSDP``,
``fsdp_version: 2``; e.g. configs/accelerate/fsdp2_8gpu.yaml). accelerate keeps FSDP off on CPU
(gloo) runs; there the same variables its launcher exports (``ACCELERATE_USE_FSDP=true``,
``FSDP_VERSION=2``, ``FSDP_*``) turn it on, which is how the tests run it. FSDP1 is refused.

Design (docs/guides/distributed.md has the long form):

* One sharding of the live network, used by every forward: training, rollouts, references, evals
  and grids. ``fully_shard`` turns the module itself into the sharded one (no wrapper), so every
  forward all-gathers each unit's parameters and frees them after. All processes therefore call it
  the same number of times: rollouts hold N / W samples per process, micro-batches hold the same
  groups on every process, evals pad the shorter shards (``evaluate(lockstep=True)``) and
  Flow-GRPO's zero-advantage refill keeps equal counts (``refill_zero_advantage(equal=True)``);
  the trainer checks the micro-batch count per optimizer step, so a mismatch stops with an error,
  not a hang.
* Units: accelerate's auto-wrap settings (``fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP`` takes the
  diffusers model's ``_no_split_modules``, e.g. FLUX's double and single blocks), then the root.
  Parameters under the model's ``frozen_prefixes`` (the toy's text encoder, called on its own by
  ``encode_prompts``) are left whole (``ignored_params``).
* Full fine-tuning's frozen reference copy is sharded the same way (two whole 12B copies per GPU
  are what FSDP is there to avoid). LoRA works too (the adapter is sharded with its base).
* EMAs stay sharded: their shadows are local shards of the same layout (blends and swaps are
  element-wise, no communication) and are gathered only for checkpoints.
* Checkpoints hold full tensors, in the same files and keys as a 1-process run (so ``dgpo export``
  and a resume on any number of processes read them): every process gathers one tensor at a time
  (``DTensor.full_tensor``), the main process keeps a CPU copy and writes. On resume every process
  reads the full tensors and keeps its own shard (``distribute_tensor(src_data_rank=None)``, no
  communication): a run resumed under FSDP continues bit-exactly.
* Mixed precision: accelerate's policy (the gathered weights in bf16, so every forward, rollouts
  and references too, computes in bf16), except that gradients are reduced in fp32, as DDP
  reduces them.
* Gradients are reduce-scattered at every backward (no ``no_sync``: accumulating unsharded
  gradients would hold a whole model's gradients on every process); accelerate's
  ``clip_grad_norm_`` takes the norm over all shards.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable

import torch
from accelerate.utils import DistributedType
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

PEFT_PREFIX = "base_model.model."
log = logging.getLogger(__name__)


def fsdp_plugin(acc):
    """accelerate's FSDP plugin of this run, or None when FSDP is off; FSDP1 is refused."""
    if acc.distributed_type == DistributedType.FSDP:
        plugin = acc.state.fsdp_plugin
    elif acc.distributed_type == DistributedType.MULTI_CPU and os.environ.get(
            "ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes"):
        from accelerate import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables, as accelerate does on GPUs
        if acc.mixed_precision != "no":
            plugin.set_mixed_precision(acc.mixed_precision)
    else:
        return None
    if plugin.fsdp_version != 2:
        raise ValueError(f"FSDP version {plugin.fsdp_version} is not supported: set fsdp_version: 2 in the accelerate "
                         "config (FSDP_VERSION=2); dgpo shards with FSDP2 (torch.distributed.fsdp.fully_shard)")
    unused = {"fsdp_activation_checkpointing": (plugin.activation_checkpointing, "use model.gradient_checkpointing"),
              "fsdp_cpu_ram_efficient_loading": (plugin.cpu_ram_efficient_loading, "every process loads the model"),
              "fsdp_ignored_modules": (plugin.ignored_modules, "the model's frozen_prefixes stay whole")}
    for key, (value, instead) in unused.items():
        if value:
            raise ValueError(f"accelerate's {key} is not applied by dgpo's FSDP ({instead}): set it off")
    if not plugin.reshard_after_forward:  # unsharded weights kept after a no-grad forward would go stale
        raise ValueError("fsdp_reshard_after_forward must be true: dgpo swaps EMA and reference weights into the "
                         "shards between forwards (rollouts, evals)")
    return plugin


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every process calls it), or ``t`` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def copy_full_(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` for a whole tensor ``src``; a sharded ``dst`` takes its own shard of it
    (every process holds ``src``: no communication)."""
    if isinstance(dst, DTensor):
        src = distribute_tensor(src.to(dst.device, dst.dtype), dst.device_mesh, dst.placements,
                                src_data_rank=None)
    dst.copy_(src)


class Sharding:
    """FSDP2 sharding of a run's networks and the gathering of their state; ``plugin=None`` is the
    unsharded run (every method is then the identity)."""

    def __init__(self, plugin=None, device: torch.device | None = None, world: int = 1, main: bool = True):
        self.plugin, self.main = plugin, main
        if plugin is not None:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import MixedPrecisionPolicy

            mp = plugin.mixed_precision_policy  # accelerate's: bf16 compute and bf16 gradient reduction
            mp = MixedPrecisionPolicy() if mp is None else dataclasses.replace(mp, reduce_dtype=torch.float32)
            self.mesh = init_device_mesh(device.type, (world,))
            self.kwargs = {"mesh": self.mesh, "reshard_after_forward": plugin.reshard_after_forward,
                           "offload_policy": plugin.cpu_offload, "mp_policy": mp}

    @classmethod
    def from_accelerator(cls, acc) -> Sharding:
        plugin = fsdp_plugin(acc)
        return cls(plugin, acc.device, acc.num_processes, acc.is_main_process)

    @property
    def enabled(self) -> bool:
        return self.plugin is not None

    # ----------------------------------------------------------------- sharding
    def shard(self, module: nn.Module, keep_whole: tuple[str, ...] = ()) -> nn.Module:
        """Shard ``module`` in place: accelerate's auto-wrap units bottom-up, then the root.
        Parameters named under ``keep_whole`` (also below peft's prefix) stay unsharded."""
        if not self.enabled:
            return module
        from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
        from torch.distributed.fsdp import FSDPModule, fully_shard

        ignored = {p for n, p in module.named_parameters()
                   if keep_whole and n.removeprefix(PEFT_PREFIX).startswith(keep_whole)}
        for p in module.parameters():  # FSDP2 shards contiguous tensors only (the toy's channels-last convs)
            if p not in ignored and not p.is_contiguous():
                p.data = p.data.contiguous()
        wrap = fsdp2_prepare_auto_wrap_policy(self.plugin, module)
        units, name = 1, type(module).__name__
        for sub in reversed(list(module.modules())[1:]):  # children before their parents
            own = set(sub.parameters())
            if wrap is not None and wrap(sub) and not isinstance(sub, FSDPModule) and own - ignored:
                fully_shard(sub, **self.kwargs, ignored_params=own & ignored)
                units += 1
        fully_shard(module, **self.kwargs, ignored_params=ignored)
        if self.main:
            n = sum(isinstance(p, DTensor) for p in module.parameters())
            log.info("FSDP2: %s sharded over %d processes in %d units (%d parameters sharded, %d kept whole)",
                     name, self.mesh.size(), units, n, len(ignored))
        return module

    # ----------------------------------------------------------------- state
    def gather(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole CPU tensors on the main process ({} elsewhere), one tensor in flight at a time;
        unsharded: ``tensors`` itself. Every process must call it."""
        if not self.enabled:
            return tensors
        out = {}
        for k, v in tensors.items():
            whole = full_tensor(v.detach())
            if self.main:
                out[k] = whole.cpu()
            del whole
        return out

    def optimizer_state(self, opt: torch.optim.Optimizer):
        """What ``checkpoints.save_checkpoint`` / ``checkpoints.load_checkpoint`` take as the optimizer:
        ``opt`` itself, or under FSDP a view whose state holds whole tensors (gathered now: every process
        calls it)."""
        return FullOptimizerState(opt, self) if self.enabled else opt


class FullOptimizerState:
    """An optimizer's state dict with whole tensors in place of shards: ``state_dict()`` returns what
    was gathered at construction (main process), ``load_state_dict`` keeps each process's shard."""

    def __init__(self, opt: torch.optim.Optimizer, sharding: Sharding):
        self.opt = opt
        sd = opt.state_dict()
        state = {i: sharding.gather(st) for i, st in sd["state"].items()}  # tensors and scalars alike
        self._sd = {"state": state, "param_groups": sd["param_groups"]}

    @property
    def param_groups(self) -> list[dict]:
        """The live groups (checked against a checkpoint before loading; DTensors report whole shapes)."""
        return self.opt.param_groups

    def state_dict(self) -> dict:
        return self._sd

    def load_state_dict(self, sd: dict) -> None:
        params = list(_params(self.opt))
        state = {}
        for i, st in sd["state"].items():
            p = params[int(i)]
            state[i] = {k: _shard_like(v, p) for k, v in st.items()}
        self.opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def _params(opt: torch.optim.Optimizer) -> Iterable[torch.Tensor]:
    for g in opt.param_groups:
        yield from g["params"]


def _shard_like(v, p: torch.Tensor):
    """A whole optimizer-state tensor shaped like parameter ``p`` -> ``p``'s shard of it (AdamW's
    moments); anything else (the step count) as it is."""
    if not (torch.is_tensor(v) and isinstance(p, DTensor) and tuple(v.shape) == tuple(p.shape)):
        return v
    return distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
