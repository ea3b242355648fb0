"""Speed options that leave the numbers alone (to float rounding): TF32 matmuls and regional
``torch.compile`` of the denoiser.

Regional compilation (diffusers' ``compile_repeated_blocks``, the PyTorch regional-compilation recipe)
compiles the transformer block class once and reuses the code for every block, so compile time stays
a fraction of a whole-model compile while the blocks, where the time goes, run compiled. A family
names its block classes (``FlowModel.repeated_blocks``); a model without any (the toy) is compiled
whole. The compiled code serves every call: rollouts, the reference (LoRA disabled, or the frozen
copy in full fine-tuning), the EMA 'old' model, training forwards with backward, and evals.
"""

from __future__ import annotations

import time

import torch
from torch import nn

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
        if type(sub).__name__ in block_names:
            sub.compile(**kwargs)
            n += 1
    if n == 0:
        raise ValueError(f"train.compile: no module of class {block_names} in {type(net).__name__}")
    return n


def compile_model(model, policy) -> dict:
    """Compile the model's denoiser (and the frozen reference copy of full fine-tuning) by region.
    Compilation itself happens at the first call of each shape and mode; the returned info counts the
    compiled modules and the seconds spent here."""
    t0 = time.perf_counter()
    blocks = list(getattr(model, "repeated_blocks", []))
    n = compile_regions(model.denoiser, blocks)
    frozen = getattr(policy, "_frozen", None)
    if frozen is not None:
        n += compile_regions(frozen, blocks)
    return {"compiled_modules": n, "blocks": blocks or ["<whole network>"], "setup_s": time.perf_counter() - t0}
