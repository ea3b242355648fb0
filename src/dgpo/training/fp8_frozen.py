"""FP8 matmuls for frozen linear weights, the weights cast to FP8 once at start-up (``train.fp8_cast_once``).

``train.fp8`` (torchao's float8 training) scales and casts every operand on every call, the frozen base
weights of LoRA training included, although they never change. Here each frozen ``nn.Linear`` keeps its
weight (dtype, name, identity: checkpoints, export and the EMAs see it as before) and gains its FP8
copies, made once with torchao's own casts: one scaled along the output features for the forward
matmul and, where a gradient must flow through the layer to the LoRA layers below it, one scaled along
the input features for the input gradient. Every call casts only its activation (forward) or output
gradient (backward), as torchao does; no weight gradient is computed (the weight is frozen). The casts
and matmuls are torchao's, so the outputs equal the per-call path's (tests/test_gpu_levers.py).
"""

from __future__ import annotations

import torch
from torch import nn

FP8_DATA = torch.uint8  # storage dtype of the FP8 copies: a module's .to(dtype) casts float buffers, not these


def _torchao():
    from torchao.float8.float8_scaling_utils import get_maybe_axiswise_dim, hp_tensor_to_float8_dynamic
    from torchao.float8.float8_training_tensor import Float8TrainingTensor, GemmInputRole

    return get_maybe_axiswise_dim, hp_tensor_to_float8_dynamic, Float8TrainingTensor, GemmInputRole


def _cast(t: torch.Tensor, cast, role, mm_config, config, dim: int):
    """``t`` to FP8 as torchao's float8 training casts that operand (its dtype, granularity and axis)."""
    axis_of, to_fp8, _, _ = _torchao()
    return to_fp8(t, cast.target_dtype, mm_config, gemm_input_role=role, scaling_granularity=cast.scaling_granularity,
                  axiswise_dim=axis_of(dim, cast.scaling_granularity),
                  round_scales_to_power_of_2=config.round_scales_to_power_of_2)


@torch._dynamo.allow_in_graph
class _FrozenFloat8MM(torch.autograd.Function):
    """x @ W^T with W's FP8 copies given: the forward casts x, the backward the output gradient."""

    @staticmethod
    def forward(ctx, x, w8, w_scale, w8t, wt_scale, mm_config, config, w_dtype):
        _, _, f8, role = _torchao()
        ctx.save_for_backward(w8t, wt_scale)
        ctx.mm_config, ctx.config, ctx.w_dtype = mm_config, config, w_dtype
        c = config.cast_config_weight
        x8 = _cast(x, config.cast_config_input, role.INPUT, mm_config, config, -1)
        # W^T [K, N] as torchao's forward casts it: scales along dim 0 (per output feature), column-major
        w = f8(w8.view(c.target_dtype).t(), w_scale, w_dtype, mm_config, role.WEIGHT,
               0 if w_scale.dim() else None)
        out = torch.mm(x8.reshape(-1, x8.shape[-1]), w)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        w8t, wt_scale = ctx.saved_tensors
        if w8t.numel() == 0:
            raise RuntimeError("train.fp8_cast_once: a gradient reached a frozen FP8 layer cast for forwards only "
                               "(full fine-tuning's frozen reference copy runs without grad)")
        _, _, f8, role = _torchao()
        c = ctx.config.cast_config_weight_for_grad_input
        g = grad.reshape(-1, grad.shape[-1])
        g8 = _cast(g, ctx.config.cast_config_grad_output, role.GRAD_OUTPUT, ctx.mm_config, ctx.config, -1)
        # W^T [K, N] scaled along dim -1 (per input feature), stored row-major: its transpose is the
        # column-major second operand the FP8 matmul takes
        wt = f8(w8t.view(c.target_dtype), wt_scale, ctx.w_dtype, ctx.mm_config, role.WEIGHT,
                -1 if wt_scale.dim() else None)
        grad_in = torch.mm(g8, wt.t())
        return grad_in.reshape(*grad.shape[:-1], grad_in.shape[-1]), None, None, None, None, None, None, None


class CastOnceFloat8Linear(nn.Linear):
    """An ``nn.Linear`` whose frozen weight has FP8 copies (:func:`cast_frozen_linears`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled():  # as torchao's Float8Linear: the output in autocast's dtype
            x = x.to(torch.get_autocast_dtype("cuda"))
        out = _FrozenFloat8MM.apply(x, self.fp8_w, self.fp8_w_scale, self.fp8_wt, self.fp8_wt_scale,
                                    self.fp8_mm_config, self.fp8_config, self.weight.dtype)
        return out if self.bias is None else out + self.bias.to(out.dtype)


@torch.no_grad()
def _attach(layer: nn.Linear, config, mm_config, backward: bool) -> None:
    """Cast the layer's weight to its FP8 copies (non-persistent buffers) and switch its class."""
    _, _, _, role = _torchao()
    wt = layer.weight.detach().t()  # [K, N], as torchao's forward sees it
    fwd = _cast(wt, config.cast_config_weight, role.WEIGHT, mm_config, config, 0)
    layer.register_buffer("fp8_w", fwd._data.t().contiguous().view(FP8_DATA), persistent=False)  # [N, K]
    layer.register_buffer("fp8_w_scale", fwd._scale.float(), persistent=False)
    if backward:
        bwd = _cast(wt, config.cast_config_weight_for_grad_input, role.WEIGHT, mm_config, config, -1)
        layer.register_buffer("fp8_wt", bwd._data.contiguous().view(FP8_DATA), persistent=False)  # [K, N]
        layer.register_buffer("fp8_wt_scale", bwd._scale.float(), persistent=False)
    else:  # forwards only (full fine-tuning's frozen copy): no second copy
        layer.register_buffer("fp8_wt", layer.weight.new_empty(0, dtype=FP8_DATA), persistent=False)
        layer.register_buffer("fp8_wt_scale", layer.weight.new_ones((), dtype=torch.float32), persistent=False)
    layer.fp8_config, layer.fp8_mm_config = config, mm_config
    layer.__class__ = CastOnceFloat8Linear


def cast_frozen_linears(net: nn.Module, keep, config, backward: bool = True) -> int:
    """Give every ``nn.Linear`` of ``net`` that ``keep(module, name)`` selects and whose weight does not
    train its FP8 copies, made now (``config``: torchao's ``Float8LinearConfig``); ``backward=False``
    where no gradient ever flows through ``net``. Returns how many layers were cast."""
    from torchao.float8.float8_training_tensor import LinearMMConfig, ScaledMMConfig

    # torchao's own gemm settings per matmul (fast accumulation in the forward only, as Float8Linear)
    mm_config = LinearMMConfig(*(ScaledMMConfig(config.emulate, g.use_fast_accum, False, config.pad_inner_dim)
                                 for g in (config.gemm_config_output, config.gemm_config_grad_input,
                                           config.gemm_config_grad_weight)))
    chosen = [m for name, m in net.named_modules() if type(m) is nn.Linear and not m.weight.requires_grad
              and keep(m, name)]
    for m in chosen:
        _attach(m, config, mm_config, backward)
    return len(chosen)
