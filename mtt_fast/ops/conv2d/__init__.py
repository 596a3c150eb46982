"""Convolution (stride 1, one group) with an explicit, fast double backward.

:func:`conv2d` equals :func:`.reference.conv2d` (``F.conv2d``). Its backward is an
autograd Function whose own backward is the analytic double backward of
:mod:`.torch_impl` (forward, backward-data and backward-weights convolutions only), so
MTT's second ``grad`` through a student step avoids PyTorch's slow batch/channel-swapped
weight-gradient convolution. The backward is differentiable once; the double backward is
first order only (``once_differentiable``). Runs on any device ATen's convolution runs on.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from mtt_fast.ops._autograd import engine_needs
from mtt_fast.ops.conv2d import reference, torch_impl

__all__ = ["conv2d", "reference"]


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, padding):
        ctx.save_for_backward(x, w)
        ctx.padding = padding
        ctx.has_bias = b is not None
        return torch_impl.forward(x, w, b, padding)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        need = (engine_needs(ctx, 0), engine_needs(ctx, 1), ctx.has_bias and engine_needs(ctx, 2))
        if not any(need):
            return None, None, None, None
        gx, gw, gb = _ConvBackward.apply(gy, x, w, ctx.padding, need)
        return gx, gw, gb, None


class _ConvBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gy, x, w, padding, need):
        ctx.set_materialize_grads(False)  # a missing upstream grad stays None, not zeros
        gy = gy.contiguous()
        ctx.save_for_backward(gy, x, w)
        ctx.padding = padding
        out = torch_impl.backward(gy, x, w, padding, need)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, ggx, ggw, ggb):
        gy, x, w = ctx.saved_tensors
        need = tuple(engine_needs(ctx, i) for i in range(3))
        g_gy, g_x, g_w = torch_impl.double_backward(ggx, ggw, ggb, gy, x, w, ctx.padding, need)
        return g_gy, g_x, g_w, None, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           padding: tuple[int, int] | int = 0) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` with a fast double backward.

    Args:
        x: (N, Ci, H, W).
        weight: (Co, Ci, kh, kw), dtype and device of ``x``.
        bias: (Co,) or None.
        padding: int or (ph, pw); stride 1, dilation 1, one group.

    Returns:
        (N, Co, H + 2 ph - kh + 1, W + 2 pw - kw + 1); differentiable twice (the backward
        is differentiable, the double backward is not).
    """
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"conv2d: expected x (N, Ci, H, W) and weight (Co, Ci, kh, kw), got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    pad = (int(padding), int(padding)) if isinstance(padding, int) else tuple(int(p) for p in padding)
    return _Conv.apply(x, weight, bias, pad)
