"""Norm block launchers backed by the compiled ops ``torch.ops.mtt_fast.norm_block_*``
(``csrc/cpu/norm_block_cpu.cpp``, ``csrc/cuda/norm_block_kernels.cu``).

Same contract as :mod:`.torch_impl`; the autograd wiring is in :mod:`mtt_fast.ops.norm_block`.
Importing this module never fails: without the extension the launchers raise a
``RuntimeError`` that says why it is missing.
"""

from __future__ import annotations

import torch

from mtt_fast import _ext

__all__ = ["forward", "backward", "double_backward", "available"]


def available() -> bool:
    """Whether the compiled norm-block ops are registered."""
    return _ext.load() and hasattr(torch.ops.mtt_fast, "norm_block_forward")


def _ops():
    if not _ext.load():
        raise RuntimeError(f"mtt_fast native norm-block ops are unavailable: {_ext.load_error()}")
    return torch.ops.mtt_fast


def forward(x, w, b, eps):
    """``x (N, C, H, W)``, ``w, b (C,)`` -> ``(y (N, C, H//2, W//2), mean (N, C), rstd (N, C))``."""
    return _ops().norm_block_forward(x, w, b, float(eps))


def backward(gy, x, w, b, mean, rstd):
    """-> ``(gx (N, C, H, W), gw (C,), gb (C,))``."""
    return _ops().norm_block_backward(gy, x, w, b, mean, rstd)


def double_backward(ggx, ggw, ggb, gy, x, w, b, mean, rstd):
    """Upstream grads (None = zero) -> ``(g_gy, g_x (N, C, H, W), g_w (C,))``."""
    return _ops().norm_block_double_backward(ggx, ggw, ggb, gy, x, w, b, mean, rstd)


def _register_fakes() -> None:
    def fwd(x, w, b, eps):
        N, C, H, W = x.shape
        return x.new_empty((N, C, H // 2, W // 2)), x.new_empty((N, C)), x.new_empty((N, C))

    def bwd(gy, x, w, b, mean, rstd):
        return torch.empty_like(x, memory_format=torch.contiguous_format), w.new_empty(w.shape), \
            w.new_empty(w.shape)

    def dbwd(ggx, ggw, ggb, gy, x, w, b, mean, rstd):
        return (torch.empty_like(gy, memory_format=torch.contiguous_format),
                torch.empty_like(x, memory_format=torch.contiguous_format), w.new_empty(w.shape))

    torch.library.register_fake("mtt_fast::norm_block_forward")(fwd)
    torch.library.register_fake("mtt_fast::norm_block_backward")(bwd)
    torch.library.register_fake("mtt_fast::norm_block_double_backward")(dbwd)


if available():
    _register_fakes()
