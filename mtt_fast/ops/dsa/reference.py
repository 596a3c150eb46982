"""Reference DSA ops in plain differentiable PyTorch: the specification, the CPU fallback
and the test oracle for the Triton and compiled kernels.

Every op takes images ``x: (B, C, H, W)`` float and per-sample parameter tensors produced
by :func:`mtt_fast.augment.sample` (after :func:`mtt_fast.augment.resolve`), and is
differentiable in ``x`` to any order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling on the affine grid ``theta`` (scale, rotate).

    Args:
        x: (B, C, H, W) images.
        theta: (B, 2, 3) affine matrices in normalised coordinates (align_corners=True),
            as ``F.affine_grid`` takes them.

    Returns:
        (B, C, H, W); samples outside the image read zero.
    """
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Horizontal flip (along W) of the images where ``mask: (B,)`` bool is True."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


def crop(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Integer translation with zero border: ``out[b, :, i, j] = x[b, :, i + dy, j + dx]``.

    Args:
        x: (B, C, H, W).
        shift: (B, 2) int64, ``(dy, dx)`` per image.
    """
    B, C, H, W = x.shape
    rows = torch.arange(H, device=x.device).unsqueeze(0) + shift[:, :1]  # (B, H)
    cols = torch.arange(W, device=x.device).unsqueeze(0) + shift[:, 1:]  # (B, W)
    keep = ((rows >= 0) & (rows < H)).unsqueeze(2) & ((cols >= 0) & (cols < W)).unsqueeze(1)
    r = rows.clamp(0, H - 1).view(B, 1, H, 1).expand(B, C, H, W)
    c = cols.clamp(0, W - 1).view(B, 1, 1, W).expand(B, C, H, W)
    out = x.gather(2, r).gather(3, c)
    return out * keep.unsqueeze(1).to(x.dtype)


def cutout_mask(center: torch.Tensor, size: tuple[int, int], H: int, W: int) -> torch.Tensor:
    """(B, H, W) mask, 0 inside the cutout square of each image, 1 elsewhere.

    The square covers rows ``[cy - h // 2, cy - h // 2 + h)`` and the same for columns,
    clipped to the image (the original's clamped index grid covers exactly that set).
    """
    h, w = size
    dev = center.device
    top = (center[:, :1] - h // 2)
    left = (center[:, 1:] - w // 2)
    r = torch.arange(H, device=dev).unsqueeze(0)
    c = torch.arange(W, device=dev).unsqueeze(0)
    in_r = (r >= top) & (r < top + h)  # (B, H)
    in_c = (c >= left) & (c < left + w)  # (B, W)
    return ~(in_r.unsqueeze(2) & in_c.unsqueeze(1))


def cutout(x: torch.Tensor, center: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero a ``size = (h, w)`` square per image centred at ``center: (B, 2)`` int64."""
    B, C, H, W = x.shape
    return x * cutout_mask(center, size, H, W).unsqueeze(1).to(x.dtype)


def color(
    x: torch.Tensor,
    brightness: torch.Tensor,
    saturation: torch.Tensor,
    contrast: torch.Tensor,
) -> torch.Tensor:
    """Brightness, then saturation, then contrast, as the original DSA.

    ``x + b``; then ``(x - m) * s + m`` with ``m`` the per-pixel channel mean; then
    ``(x - m) * c + m`` with ``m`` the per-image mean over (C, H, W). Each factor is (B,).
    """
    v = lambda t: t.to(x.dtype).view(-1, 1, 1, 1)  # noqa: E731
    x = x + v(brightness)
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * v(saturation) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * v(contrast) + m
