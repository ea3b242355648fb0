"""FP8 attention in the rollouts' forwards (``train.fp8_attention``).

Inside :class:`FP8Attention` (a torch function mode, so per thread: the reward thread's VAE and reward models
keep their own precision; the FA3 backend switch around it is process-wide), every
``F.scaled_dot_product_attention`` call of the denoiser without a mask or dropout runs ``kernel`` instead. On
the GPU the kernel is FlashAttention-3's FP8 forward through PyTorch's quantized SDPA: q, k and v cast to
float8 e4m3 with one scale per sample and head (amax / 448, as torchao's low-precision attention), the output
in bf16. It has no backward, so only the rollouts use it: the loss's forwards (policy, reference, 'old') keep
exact attention and compare like with like; the samples change by FP8 rounding.

:func:`emulated_fp8_sdpa` computes what such a kernel computes, in float32 on any device: the same
rounding of q, k, v and of the softmax probabilities before their product with v (FA3's FP8 kernel feeds
its second matmul e4m3 probabilities). The CPU tests measure the tolerance with it
(docs/results/performance.md); it is not the kernel, and it is not faster.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from dgpo.errors import ConfigError

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
FA3_HEAD_DIMS = (64, 128, 256)  # FlashAttention-3's FP8 forward
_SDPA = F.scaled_dot_product_attention


def quantize_per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, H, S, D] -> (float8 e4m3 [B, H, S, D] contiguous, descale [B, H] float32): one scale per sample
    and head, amax / 448 (1 for an all-zero head)."""
    amax = x.abs().amax(dim=(2, 3)).float()
    ok = amax > 1e-12
    scale = torch.where(ok, E4M3_MAX / amax.clamp(min=1e-12), torch.ones_like(amax))
    x8 = (x.float() * scale[:, :, None, None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).contiguous()
    return x8, torch.where(ok, amax / E4M3_MAX, torch.ones_like(amax))


def emulated_fp8_sdpa(q, k, v, scale: float | None = None, is_causal: bool = False) -> torch.Tensor:
    """Attention as an FP8 kernel rounds it, in float32: per-head e4m3 q, k, v; probabilities
    exp(s - rowmax) rounded to e4m3 before the product with v; normalised by the float32 row sums."""
    (q8, dq), (k8, dk), (v8, dv) = (quantize_per_head(t) for t in (q, k, v))
    qf, kf, vf = (t8.float() * d[:, :, None, None] for t8, d in ((q8, dq), (k8, dk), (v8, dv)))
    s = (qf @ kf.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if is_causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    out = (p.to(E4M3).float() @ vf) / p.sum(dim=-1, keepdim=True)
    return out.to(q.dtype)


def fa3_fp8_sdpa(q, k, v, scale: float | None = None, is_causal: bool = False) -> torch.Tensor:
    """FlashAttention-3's FP8 forward (CUDA, Hopper; inside :func:`flash_attention_3`)."""
    from torch.nn.attention.experimental._scaled_dot_product_attention_quantized import (
        _scaled_dot_product_attention_quantized,
    )

    (q8, dq), (k8, dk), (v8, dv) = (quantize_per_head(t) for t in (q, k, v))
    out = _scaled_dot_product_attention_quantized(q8, k8, v8, is_causal=is_causal, scale=scale, q_descale=dq,
                                                  k_descale=dk, v_descale=dv)
    return out.to(q.dtype)


def fa3_unavailable(device: torch.device) -> str | None:
    """Why FlashAttention-3's FP8 attention cannot run on ``device``, or None."""
    if device.type != "cuda":
        return (f"train.fp8_attention needs a CUDA GPU (FlashAttention-3's FP8 kernel, Hopper); this run is on "
                f"{device.type}: set train.fp8_attention=false")
    cap = torch.cuda.get_device_capability(device)
    if cap[0] != 9:
        return (f"train.fp8_attention needs a Hopper GPU (compute capability 9.x: H100, H200), "
                f"{torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}: set train.fp8_attention=false")
    if importlib.util.find_spec("torch.nn.attention.experimental._scaled_dot_product_attention_quantized") is None:
        return f"train.fp8_attention needs PyTorch's quantized SDPA (torch 2.11 or newer); this is {torch.__version__}"
    if importlib.util.find_spec("flash_attn_interface") is None:
        return ("train.fp8_attention needs FlashAttention-3's flash_attn_interface module (built from the hopper/ "
                "folder of github.com/Dao-AILab/flash-attention; not on PyPI): install it or set "
                "train.fp8_attention=false")
    return None


def check_fp8_attention(device: torch.device) -> None:
    reason = fa3_unavailable(device)
    if reason:
        raise ConfigError(reason)


@contextmanager
def flash_attention_3() -> Iterator[None]:
    """PyTorch's flash backend switched to FlashAttention-3 (the FP8 kernel's) while inside: a process-wide
    switch, so the reward thread's flash attention (bf16) runs on FA3 too meanwhile."""
    from torch.nn.attention import activate_flash_attention_impl, restore_flash_attention_impl

    activate_flash_attention_impl("FA3")
    try:
        yield
    finally:
        restore_flash_attention_impl()


class FP8Attention(TorchFunctionMode):
    """Within it (this thread only), unmasked, dropout-free 4-D ``F.scaled_dot_product_attention`` calls
    whose head width ``kernel`` takes run ``kernel(q, k, v, scale=, is_causal=)``; others run as before.
    The FA3 kernel also needs :func:`flash_attention_3` around it."""

    def __init__(self, kernel=fa3_fp8_sdpa, head_dims: tuple[int, ...] | None = FA3_HEAD_DIMS):
        super().__init__()
        self.kernel, self.head_dims = kernel, head_dims

    def _takes(self, q, k, v, kw: dict) -> bool:
        if kw.get("attn_mask") is not None or kw.get("dropout_p", 0.0) != 0.0 or kw.get("enable_gqa", False):
            return False
        if not q.dim() == k.dim() == v.dim() == 4:
            return False
        return self.head_dims is None or (q.shape[-1] in self.head_dims and v.shape[-1] == q.shape[-1])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA and len(args) >= 3:
            kw = {**dict(zip(("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"), args[3:])), **kwargs}
            if self._takes(*args[:3], kw):
                return self.kernel(*args[:3], scale=kw.get("scale"), is_causal=kw.get("is_causal", False))
        return func(*args, **kwargs)
