"""ZCA whitening backed by the compiled extension (``torch.ops.mtt_fast.zca_apply``).

Importing this module never fails: without the extension :func:`zca_apply` raises a
``RuntimeError`` that says why it is missing.
"""

from __future__ import annotations

import torch

from mtt_fast import _ext
from mtt_fast.ops.zca.reference import default_scale

__all__ = ["zca_apply", "available"]


def available() -> bool:
    """Whether the compiled ZCA op is registered."""
    return _ext.load()


def _ops():
    if not _ext.load():
        raise RuntimeError(f"mtt_fast native ZCA op is unavailable: {_ext.load_error()}")
    return torch.ops.mtt_fast


class _ZCA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mean, matrix, scale):
        ctx.save_for_backward(matrix)
        ctx.scale = scale
        ctx.in_dtype = x.dtype
        return _ops().zca_apply(x, mean, matrix, scale)

    @staticmethod
    def backward(ctx, grad):
        # d/dx of (x * s - mean) @ M is (grad @ M^T) * s; plain torch ops, so this
        # backward is itself differentiable.
        (matrix,) = ctx.saved_tensors
        n = grad.shape[0]
        gx = (grad.reshape(n, -1) @ matrix.to(grad.dtype).t()) * ctx.scale
        return gx.reshape(grad.shape).to(ctx.in_dtype), None, None, None


def zca_apply(
    x: torch.Tensor, mean: torch.Tensor, matrix: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """ZCA-whiten images: ``((x * scale - mean) @ matrix)`` in float32, shaped like ``x``.

    Args:
        x: (N, C, H, W) uint8 or float images.
        mean: (D,) with ``D = C * H * W``, the fitted mean (of ``x * scale``).
        matrix: (D, D) whitening matrix.
        scale: multiplies ``x`` before centring; ``None`` (default) means ``1/255`` for
            uint8 and ``1`` for float images, as the reference.

    Returns:
        (N, C, H, W) float32 on ``x``'s device (float64 input is computed in float32).
        Differentiable in float ``x`` only (not in ``mean`` / ``matrix``).
    """
    if not torch.is_tensor(x) or x.dim() != 4:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x: expected a (N, C, H, W) tensor, got {got}")
    s = default_scale(x, scale)
    mean = mean.to(x.device)
    matrix = matrix.to(x.device)
    if x.is_floating_point() and x.requires_grad and torch.is_grad_enabled():
        return _ZCA.apply(x, mean, matrix, s)
    return _ops().zca_apply(x, mean, matrix, s)


def _register_fakes() -> None:
    @torch.library.register_fake("mtt_fast::zca_apply")
    def _(x, mean, matrix, scale):
        return x.new_empty(x.shape, dtype=torch.float32)


if _ext.load():
    _register_fakes()
