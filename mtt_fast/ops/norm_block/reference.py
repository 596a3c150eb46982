"""The ConvNet norm block in plain PyTorch: the spec and the test oracle.

``instance norm (GroupNorm(C, C), affine) -> ReLU -> 2x2 average pooling`` exactly as the
plain modules of :class:`mtt_fast.models.ConvNet` compute it. Differentiable to any order
by autograd (the ReLU mask makes every derivative through the mask zero almost everywhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5  # nn.GroupNorm's default; the fused kernels use the same


def norm_block(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """``avg_pool2d(relu(group_norm(x, C, weight, bias, eps)), 2)``.

    Args:
        x: (N, C, H, W) conv outputs, H, W >= 2.
        weight: (C,) GroupNorm scale.
        bias: (C,) GroupNorm shift.
        eps: variance epsilon (default 1e-5, as ``nn.GroupNorm``).

    Returns:
        (N, C, H // 2, W // 2); an odd last row / column is dropped (``avg_pool2d``'s floor).
    """
    return F.avg_pool2d(F.relu(F.group_norm(x, x.shape[1], weight, bias, eps)), 2)
