"""Launcher of the ``native`` backend of ``zca_apply``: the compiled
``torch.ops.mtt_fast.zca_apply`` (``csrc/``; a fused scale + centre pass, then a matmul).

A plain function on tensors, no autograd: :func:`mtt_fast.ops.zca.zca_apply` validates the
arguments, wraps it in its autograd Function and calls it with contiguous uint8 / float16
/ bfloat16 / float32 images and float32 ``mean`` / ``matrix`` on the images' device.

Importing this module never fails: without the extension :func:`zca_apply` raises a
``RuntimeError`` that says why it is missing. When the extension is loaded, importing it
registers the op's fake (meta) kernel.
"""

from __future__ import annotations

import torch

from mtt_fast import _ext

__all__ = ["zca_apply", "available"]


def available() -> bool:
    """Whether the compiled ZCA op is registered."""
    return _ext.load()


def zca_apply(
    x: torch.Tensor, mean: torch.Tensor, matrix: torch.Tensor, scale: float
) -> torch.Tensor:
    """``(x * scale - mean) @ matrix`` in float32: ``x (N, C, H, W)`` -> (N, C, H, W)."""
    if not _ext.load():
        raise RuntimeError(f"mtt_fast native ZCA op is unavailable: {_ext.load_error()}")
    return torch.ops.mtt_fast.zca_apply(x, mean, matrix, float(scale))


def _register_fakes() -> None:
    @torch.library.register_fake("mtt_fast::zca_apply")
    def _(x, mean, matrix, scale):
        return x.new_empty(x.shape, dtype=torch.float32)


if _ext.load():
    _register_fakes()
