"""Speed options: TF32 matmuls and regional ``torch.compile`` of the denoiser, which leave the numbers
alone (to float rounding), and FP8 matmuls (``train.fp8``), which do not.

Regional compilation (diffusers' ``compile_repeated_blocks``, the PyTorch regional-compilation recipe)
compiles the transformer block class once and reuses the code for every block, so compile time stays
a fraction of a whole-model compile while the blocks, where the time goes, run compiled. A family
names its block classes (``FlowModel.repeated_blocks``); a model without any (the toy) is compiled
whole. The compiled code serves every call: rollouts, the reference (LoRA disabled, or the frozen
copy in full fine-tuning), the EMA 'old' model, training forwards with backward, and evals.

The GPU levers beside them (docs/results/performance.md, "Levers"): ``train.compile_mode`` (inductor's
max-autotune), ``train.fp8_cast_once`` (the frozen weights cast to FP8 once: ``fp8_frozen.py``),
``train.cuda_graphs`` (the rollouts' calls replayed from CUDA graphs: ``graphs.py``) and
``train.fp8_attention`` (FP8 attention in the rollouts: ``fp8_attention.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from dgpo.errors import ConfigError
from dgpo.extras import require
from dgpo.training.fp8_attention import FP8Attention, check_fp8_attention, flash_attention_3
from dgpo.training.fp8_frozen import CastOnceFloat8Linear, cast_frozen_linears
from dgpo.training.graphs import StaticCalls

log = logging.getLogger(__name__)

# each block variant (e.g. SD3.5's dual-attention and plain blocks, the last context-pre-only one) x
# grad mode x adapter on/off x batch size is one cache entry of the block's code: torch's default
# limit of 8 would silently send the rest back to eager
RECOMPILE_LIMIT = 64


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls and convolutions on CUDA (the VAE, rewards, fp32 weights); no effect on
    the CPU or on bf16 weights."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def _raise_recompile_limit() -> None:
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))


def _base(module: nn.Module) -> nn.Module:
    """The network inside a peft wrapper (its blocks hold the LoRA layers)."""
    get = getattr(module, "get_base_model", None)
    return get() if callable(get) else module


def compile_regions(module: nn.Module, block_names: list[str], **kwargs) -> int:
    """``torch.compile`` every sub-module whose class name is in ``block_names`` (in place, like
    ``nn.Module.compile``), or the whole network when the list is empty. Returns how many modules were
    compiled; a block list that matches nothing is an error (a renamed class would otherwise leave
    everything eager)."""
    _raise_recompile_limit()
    net = _base(module)
    if not block_names:
        net.compile(**kwargs)
        return 1
    n = 0
    for sub in net.modules():
        # FSDP2's fully_shard swaps a block's class for a subclass named FSDP<name>: match the MRO
        if any(c.__name__ in block_names for c in type(sub).__mro__):
            sub.compile(**kwargs)
            n += 1
    if n == 0:
        raise ValueError(f"train.compile: no module of class {block_names} in {type(net).__name__}")
    return n


def compile_model(model, policy, mode: str = "default") -> dict:
    """Compile the model's denoiser (and the frozen reference copy of full fine-tuning) by region, in
    inductor's ``mode`` (``train.compile_mode``). Compilation itself happens at the first call of each
    shape and mode; the returned info counts the compiled modules and the seconds spent here."""
    t0 = time.perf_counter()
    blocks = list(getattr(model, "repeated_blocks", []))
    kwargs = {} if mode == "default" else {"mode": mode}
    n = compile_regions(model.denoiser, blocks, **kwargs)
    frozen = getattr(policy, "_frozen", None)
    if frozen is not None:
        n += compile_regions(frozen, blocks, **kwargs)
    info = {"compiled_modules": n, "blocks": blocks or ["<whole network>"], "setup_s": time.perf_counter() - t0}
    return info if mode == "default" else {**info, "mode": mode}


FP8_RECIPES = ("tensorwise", "rowwise")


def fp8_filter(net: nn.Module, block_names: list[str], skip: tuple[str, ...] = ()):
    """Which ``nn.Linear`` layers run in FP8: those inside the repeated blocks (every one when the
    model names none), never LoRA's own A/B or the parts under ``skip`` (the model's separately called
    ``frozen_prefixes``, e.g. the toy's text encoder), and only with both widths multiples of 16 (the
    FP8 matmul kernels' requirement)."""
    blocks = [n + "." for n, m in net.named_modules() if type(m).__name__ in block_names]

    def keep(mod: nn.Module, fqn: str) -> bool:
        if any(f".{part}." in f".{fqn}." for part in ("lora_A", "lora_B")) or fqn.startswith(skip):
            return False
        if block_names and not any(fqn.startswith(b) for b in blocks):
            return False
        return mod.in_features % 16 == 0 and mod.out_features % 16 == 0

    return keep


def fp8_device_error(device: torch.device) -> str | None:
    """Why FP8 matmuls cannot run on ``device`` (CUDA before compute capability 8.9: Ada / Hopper), or
    None. The CPU runs them (slowly) through ``torch._scaled_mm``: that is how the tests check them."""
    if device.type != "cuda":
        return None
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        name = torch.cuda.get_device_name(device)
        return (f"train.fp8 needs a GPU with FP8 matmuls (compute capability 8.9 or newer: Ada, Hopper, "
                f"Blackwell); {name} has {cap[0]}.{cap[1]}: use train.fp8=none")
    return None


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def use_fp8(model, policy, recipe: str, compiled: bool = True, cast_once: bool = False) -> dict:
    """FP8 matmuls (torchao's float8 training, dynamic scaling with ``recipe``) for the denoiser's
    linear layers (:func:`fp8_filter`) in every forward and backward: rollouts, reference, EMA 'old',
    training and evals. The frozen copy of full fine-tuning is converted alike.

    Weights keep their dtype, names and identity (checkpoints, the optimizer and the EMAs see the same
    parameters); only the matmuls' operands are cast. Called before FSDP shards the networks: the
    weights are gathered in the policy's dtype and cast per matmul (torchao's FP8 all-gather is not
    used). ``dgpo eval`` / ``sample`` / ``export`` load runs without FP8. With ``cast_once`` the layers
    whose weights do not train (LoRA's base layers, full fine-tuning's frozen copy) get FP8 copies of their
    weights made now instead (``fp8_frozen.py``); the others are torchao's. Returns the number of
    converted layers (and of those cast once) and the recipe."""
    if recipe not in FP8_RECIPES:
        raise ConfigError(f"train.fp8={recipe!r}; allowed: 'none', {', '.join(map(repr, FP8_RECIPES))}")
    device_error = fp8_device_error(next(model.denoiser.parameters()).device)
    if device_error:
        raise ConfigError(device_error)
    require("fp8", "train.fp8")
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    blocks = list(getattr(model, "repeated_blocks", []))
    # padding: the weight-gradient matmul's inner width is batch x tokens (SD3: 205 text tokens), which
    # CUDA's FP8 kernels need as a multiple of 16
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), pad_inner_dim=True)
    nets = [_base(model.denoiser)] + ([policy._frozen] if getattr(policy, "_frozen", None) is not None else [])
    if blocks and not any(type(m).__name__ in blocks for m in nets[0].modules()):
        raise ConfigError(f"train.fp8: no module of class {blocks} in {type(nets[0]).__name__}")
    n = once = 0
    for net in nets:
        keep = fp8_filter(net, blocks, tuple(getattr(model, "frozen_prefixes", ())))
        if cast_once:  # full fine-tuning's frozen copy only runs without grad: no backward copy
            once += cast_frozen_linears(net, keep, config, backward=net is nets[0])
        convert_to_float8_training(net, config=config, module_filter_fn=lambda m, fqn, keep=keep: not isinstance(
            m, CastOnceFloat8Linear) and keep(m, fqn))
        fp8 = [m for m in net.modules() if isinstance(m, (Float8Linear, CastOnceFloat8Linear))]
        for m in fp8:  # torchao's rowwise casts refuse strided views (Sana's attention output is one)
            m.register_forward_pre_hook(_contiguous_input)
        n += len(fp8)
    if n == 0:
        raise ConfigError(f"train.fp8: no linear layer of {type(nets[0]).__name__}'s blocks qualifies (widths must "
                          "be multiples of 16)")
    if not compiled and n > once:  # torchao's eager backward also computes the frozen weights' gradient
        log.warning("train.fp8 without train.compile: the FP8 casts run unfused and the backward also computes "
                    "the frozen weights' unused gradient; expect it slower than bf16")
    info = {"recipe": recipe, "fp8_linears": n}
    return {**info, "cast_once_linears": once} if cast_once else info


def check_sharded(train, sharded: bool) -> None:
    """The levers that FSDP does not take: FP8 copies made once would be whole on every process, and a
    CUDA graph would replay one gather of shards."""
    if not sharded:
        return
    for key in ("fp8_cast_once", "cuda_graphs"):
        if getattr(train, key):
            raise ConfigError(f"train.{key}: not supported under FSDP (accelerate's FSDP2 config): set it to false")


class RolloutLevers:
    """The rollouts' context (``trainer.fit`` enters it around ``algo.rollout``): the denoiser's velocity
    calls under FP8 attention (``attention``: a mode factory, :class:`FP8Attention`) and through
    :class:`StaticCalls` (``graphs``: "capture" for CUDA graphs, "dry" for the same bookkeeping without
    them); the text encoders and the reward thread keep exact attention. Empty when neither is on."""

    def __init__(self, model, state=lambda: None, graphs: str | None = None, attention=None, fa3: bool = False):
        self.model, self.fa3, self.attention = model, fa3, attention
        velocity = model.velocity
        if attention is not None:
            velocity = _under(attention, velocity)
        self.graphs = StaticCalls(velocity, state, capture=graphs == "capture") if graphs else None
        self.velocity = self.graphs or (velocity if attention is not None else None)

    @classmethod
    def from_config(cls, model, policy, train, device: torch.device) -> RolloutLevers:
        if train.fp8_attention:
            check_fp8_attention(device)
        if train.cuda_graphs and device.type != "cuda":
            log.warning("train.cuda_graphs: no CUDA device here (%s); the rollouts run without graphs", device.type)
        graphs = "capture" if train.cuda_graphs and device.type == "cuda" else None
        return cls(model, policy.mode_key, graphs, FP8Attention if train.fp8_attention else None, train.fp8_attention)

    @contextmanager
    def __call__(self):
        with ExitStack() as stack:
            if self.fa3:
                stack.enter_context(flash_attention_3())
            if self.velocity is not None:
                self.model.velocity = self.velocity  # the instance attribute hides the class's method
                stack.callback(delattr, self.model, "velocity")
            yield

    def info(self) -> dict | None:
        if self.velocity is None:
            return None
        return {"cuda_graphs": None if self.graphs is None else dict(self.graphs.stats),
                "fp8_attention": self.attention is not None}


def _under(mode, fn):
    """``fn`` called inside a fresh ``mode()`` (a torch function mode: this thread, this call only)."""
    def call(*args, **kwargs):
        with mode():
            return fn(*args, **kwargs)
    return call
