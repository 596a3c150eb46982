"""3x3-style convolution as the ConvNet uses it (stride 1, no dilation, one group): the
spec, ``F.conv2d``, differentiable to any order by autograd."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           padding: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=padding)``.

    Args:
        x: (N, Ci, H, W).
        weight: (Co, Ci, kh, kw).
        bias: (Co,) or None.
        padding: (ph, pw).

    Returns:
        (N, Co, H + 2 ph - kh + 1, W + 2 pw - kw + 1).
    """
    return F.conv2d(x, weight, bias, padding=padding)
