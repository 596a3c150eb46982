"""Reference DSA ops in plain differentiable PyTorch: the specification, the test oracle
for the Triton and compiled kernels, and the launchers of the ``torch`` backend.

Every op takes images ``x: (B, C, H, W)`` float and per-sample parameter tensors produced
by :func:`mtt_fast.augment.sample` (after :func:`mtt_fast.augment.resolve`), and is
differentiable in ``x`` (and in its float parameters) to any order when called directly.
Through :mod:`mtt_fast.ops.dsa` (``backend="torch"``) the same functions run as launchers
under the op's one autograd Function, with the gradient contract of every backend.

Each op is affine in ``x``; ``<op>_adjoint(g, *params)`` applies the transpose of its
linear part (the vector-Jacobian product), which is the op's backward:
``affine_adjoint`` and ``color_adjoint`` are autograd's own VJP of the spec (exactly the
numbers differentiating the spec gives), ``crop_adjoint`` is the crop by ``-shift``;
``flip`` and ``cutout`` are their own adjoints.
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


# --------------------------------------------------------------------------- adjoints


def _vjp(fn, g: torch.Tensor, *params) -> torch.Tensor:
    # The op is affine in x, so its VJP does not depend on x: take it at x = 0.
    with torch.enable_grad():
        z = torch.zeros_like(g, requires_grad=True)
        (gx,) = torch.autograd.grad(fn(z, *params), z, g)
    return gx


def affine_adjoint(g: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Transpose of :func:`affine` in ``x``: ``g (B, C, H, W)`` -> ``(B, C, H, W)``."""
    return _vjp(affine, g, theta)


def crop_adjoint(g: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Transpose of :func:`crop`: the crop by ``-shift`` (zero border)."""
    return crop(g, -shift)


def color_adjoint(
    g: torch.Tensor,
    brightness: torch.Tensor,
    saturation: torch.Tensor,
    contrast: torch.Tensor,
) -> torch.Tensor:
    """Transpose of the linear part of :func:`color` (``brightness`` plays no part); that
    part is self-adjoint, so this is also its own adjoint."""
    return _vjp(color, g, brightness, saturation, contrast)
