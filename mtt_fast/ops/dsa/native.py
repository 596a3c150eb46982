"""DSA ops backed by the compiled extension (``torch.ops.mtt_fast.*``, ``csrc/``).

Same signatures and results as :mod:`mtt_fast.ops.dsa.reference`, with fused kernels
(CPU: OpenMP over the batch; CUDA: ``csrc/cuda/dsa_kernels.cu``).

Gradients flow to the images ``x`` only; the augmentation parameters (``theta``,
``mask``, ``shift``, ``center``, ``brightness``, ``saturation``, ``contrast``) are sampled,
never learned, and get ``None``. Each backward is **first-order only**
(``once_differentiable``): MTT differentiates through the student's training steps but
never through an augmentation's backward, which is linear in the upstream gradient and
does not depend on ``x``.

Importing this module never fails: without the extension the functions raise a
``RuntimeError`` that says why it is missing (:func:`mtt_fast._ext.load_error`).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from mtt_fast import _ext

__all__ = ["affine", "flip", "crop", "cutout", "color", "available"]


def available() -> bool:
    """Whether the compiled DSA ops are registered."""
    return _ext.load()


def _ops():
    if not _ext.load():
        raise RuntimeError(f"mtt_fast native DSA ops are unavailable: {_ext.load_error()}")
    return torch.ops.mtt_fast


def _check_images(x: torch.Tensor) -> None:
    if not torch.is_tensor(x) or x.dim() != 4:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x: expected a (B, C, H, W) tensor, got {got}")


class _Affine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta):
        ctx.save_for_backward(theta)
        return _ops().dsa_affine(x, theta)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (theta,) = ctx.saved_tensors
        gx = _ops().dsa_affine_backward(grad, theta) if ctx.needs_input_grad[0] else None
        return gx, None


class _Flip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return _ops().dsa_flip(x, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors  # a flip is its own adjoint
        return (_ops().dsa_flip(grad, mask) if ctx.needs_input_grad[0] else None), None


class _Crop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift):
        ctx.save_for_backward(shift)
        return _ops().dsa_crop(x, shift)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (shift,) = ctx.saved_tensors  # adjoint: the opposite shift, zero border
        return (_ops().dsa_crop(grad, -shift) if ctx.needs_input_grad[0] else None), None


class _Cutout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, center, h, w):
        ctx.save_for_backward(center)
        ctx.hw = (h, w)
        return _ops().dsa_cutout(x, center, h, w)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (center,) = ctx.saved_tensors  # a mask is its own adjoint
        gx = _ops().dsa_cutout(grad, center, *ctx.hw) if ctx.needs_input_grad[0] else None
        return gx, None, None, None


class _Color(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, brightness, saturation, contrast):
        # the backward needs neither x nor brightness: the op is affine in x
        ctx.save_for_backward(saturation, contrast)
        return _ops().dsa_color(x, brightness, saturation, contrast)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        saturation, contrast = ctx.saved_tensors
        gx = (
            _ops().dsa_color_backward(grad, saturation, contrast)
            if ctx.needs_input_grad[0]
            else None
        )
        return gx, None, None, None


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling on the affine grid ``theta`` (scale, rotate); zeros outside.

    Args:
        x: (B, C, H, W) float32 / float64 images.
        theta: (B, 2, 3) affine matrices in normalised coordinates (align_corners=True).

    Returns:
        (B, C, H, W). Backward: first-order, to ``x`` only.
    """
    _check_images(x)
    return _Affine.apply(x, theta)


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of the images where ``mask`` is True.

    Args:
        x: (B, C, H, W).
        mask: (B,) bool.

    Returns:
        (B, C, H, W). Backward: first-order, to ``x`` only.
    """
    _check_images(x)
    return _Flip.apply(x, mask)


def crop(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Integer translation with zero border: ``out[b, :, i, j] = x[b, :, i + dy, j + dx]``.

    Args:
        x: (B, C, H, W).
        shift: (B, 2) int64, ``(dy, dx)`` per image.

    Returns:
        (B, C, H, W). Backward: first-order, to ``x`` only.
    """
    _check_images(x)
    return _Crop.apply(x, shift)


def cutout(x: torch.Tensor, center: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero a ``size = (h, w)`` square per image (rows ``[cy - h // 2, cy - h // 2 + h)``).

    Args:
        x: (B, C, H, W).
        center: (B, 2) int64, ``(cy, cx)`` per image.
        size: ``(h, w)`` python ints.

    Returns:
        (B, C, H, W). Backward: first-order, to ``x`` only.
    """
    _check_images(x)
    h, w = (int(s) for s in size)
    return _Cutout.apply(x, center, h, w)


def color(
    x: torch.Tensor,
    brightness: torch.Tensor,
    saturation: torch.Tensor,
    contrast: torch.Tensor,
) -> torch.Tensor:
    """Brightness, then saturation, then contrast (the original DSA), in one fused op.

    Args:
        x: (B, C, H, W).
        brightness: (B,) added to every pixel.
        saturation: (B,) scales the deviation from the per-pixel channel mean.
        contrast: (B,) scales the deviation from the per-image mean.

    Returns:
        (B, C, H, W). Backward: first-order, to ``x`` only.
    """
    _check_images(x)
    return _Color.apply(x, brightness, saturation, contrast)


# Fake (meta) kernels, for torch.compile and torch.library.opcheck: every op returns a
# tensor shaped like its first argument.
def _register_fakes() -> None:
    def like_first(x, *args):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    for name in (
        "dsa_affine",
        "dsa_affine_backward",
        "dsa_flip",
        "dsa_crop",
        "dsa_cutout",
        "dsa_color",
        "dsa_color_backward",
    ):
        torch.library.register_fake(f"mtt_fast::{name}")(like_first)


if _ext.load():
    _register_fakes()
