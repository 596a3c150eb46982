"""The fused norm block's analytic launchers in plain PyTorch (the CPU / GPU fallback).

Per (n, c) plane of ``M = H * W`` pixels, with ``mu``, ``r = 1 / sqrt(var + eps)`` (biased
variance), ``xh = (x - mu) r``, ``z = w xh + b``, the ReLU mask ``m = [z > 0]`` and ``P`` the
2x2 average pooling (``P^T`` spreads ``gy / 4`` over each window, zero on a dropped odd
row / column):

* forward: ``y = P relu(z)``;
* backward: ``gz = m * P^T gy``, ``s1 = sum gz``, ``s2 = sum gz xh``,
  ``gx = w r (gz - s1 / M - xh s2 / M)``, ``gw = sum_n s2``, ``gb = sum_n s1``;
* double backward (upstream ``ggx``, ``ggw``, ``ggb`` of ``gx``, ``gw``, ``gb``; ``m`` is
  piecewise constant, so nothing flows through it and ``d/db = 0``), with
  ``t1 = sum ggx``, ``t2 = sum ggx xh``, ``u = sum ggx gz``, ``k = w r / M``:

  - ``d_gz = ggb + ggw xh + w r (ggx - t1 / M - xh t2 / M)``, ``g_gy = P (m d_gz)``;
  - ``g_w = sum_n r (u - t1 s1 / M - t2 s2 / M)``;
  - ``A = ggw gz - k (ggx s2 + t2 gz)`` (the partial wrt ``xh`` at fixed ``r``),
    ``R = w (u - t1 s1 / M - t2 s2 / M)`` (the partial wrt ``r``), and through
    ``dxh_j / dx_k = r (d_jk - 1 / M - xh_j xh_k / M)``, ``dr / dx_k = -r^2 xh_k / M``:
    ``g_x = r (A - sum A / M - xh sum(A xh) / M) - R r^2 xh / M``, where
    ``sum A = ggw s1 - k (t1 s2 + t2 s1)`` and ``sum(A xh) = ggw s2 - 2 k t2 s2``.

The compiled and Triton launchers implement the same equations (``csrc/norm_block_math.h``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _stats(x: torch.Tensor, eps: float):
    xf = x.flatten(2)
    mean = xf.mean(-1)
    var = xf.var(-1, unbiased=False)
    return mean, torch.rsqrt(var + eps)


def _bc(t: torch.Tensor) -> torch.Tensor:  # (N, C) or (C,) -> broadcastable over (H, W)
    return t[..., None, None]


def _unpool(gy: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``P^T gy``: (N, C, H // 2, W // 2) -> (N, C, H, W), ``gy / 4`` per 2x2 window."""
    N, C, Ho, Wo = gy.shape
    up = (0.25 * gy)[:, :, :, None, :, None].expand(N, C, Ho, 2, Wo, 2).reshape(N, C, 2 * Ho, 2 * Wo)
    if 2 * Ho != H or 2 * Wo != W:
        up = F.pad(up, (0, W - 2 * Wo, 0, H - 2 * Ho))
    return up


def _xhat_mask(x, w, b, mean, rstd):
    xh = (x - _bc(mean)) * _bc(rstd)
    return xh, (xh * _bc(w) + _bc(b)) > 0


def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float):
    """Returns ``(y (N, C, H//2, W//2), mean (N, C), rstd (N, C))``."""
    mean, rstd = _stats(x, eps)
    z = (x - _bc(mean)) * _bc(rstd * w) + _bc(b)
    return F.avg_pool2d(z.clamp_min_(0), 2), mean, rstd


def backward(gy, x, w, b, mean, rstd):
    """Returns ``(gx (N, C, H, W), gw (C,), gb (C,))``."""
    H, W = x.shape[-2:]
    M = H * W
    xh, m = _xhat_mask(x, w, b, mean, rstd)
    gz = _unpool(gy, H, W) * m
    s1 = gz.sum((2, 3))
    s2 = (gz * xh).sum((2, 3))
    gx = _bc(w * rstd) * (gz - _bc(s1 / M) - xh * _bc(s2 / M))
    return gx, s2.sum(0), s1.sum(0)


def double_backward(ggx, ggw, ggb, gy, x, w, b, mean, rstd):
    """Upstream ``ggx (N, C, H, W)``, ``ggw (C,)``, ``ggb (C,)`` (each may be None: zero).

    Returns ``(g_gy (N, C, H//2, W//2), g_x (N, C, H, W), g_w (C,))``; ``g_b`` is zero.
    """
    H, W = x.shape[-2:]
    M = H * W
    xh, m = _xhat_mask(x, w, b, mean, rstd)
    gz = _unpool(gy, H, W) * m
    s1 = gz.sum((2, 3))
    s2 = (gz * xh).sum((2, 3))
    zero = x.new_zeros(())
    if ggx is not None:
        t1 = ggx.sum((2, 3))
        t2 = (ggx * xh).sum((2, 3))
        u = (ggx * gz).sum((2, 3))
    else:
        t1 = t2 = u = x.new_zeros(s1.shape)
    ggw_ = ggw if ggw is not None else zero
    ggb_ = ggb if ggb is not None else zero
    wr = w * rstd  # (N, C)
    k = wr / M
    d_gz = _bc(ggb_) + _bc(ggw_) * xh
    if ggx is not None:
        d_gz = d_gz + _bc(wr) * (ggx - _bc(t1 / M) - xh * _bc(t2 / M))
    g_gy = F.avg_pool2d(d_gz * m, 2)
    q = u - t1 * s1 / M - t2 * s2 / M
    g_w = (rstd * q).sum(0)
    R = w * q
    A = _bc(ggw_) * gz - _bc(k) * (t2[..., None, None] * gz)
    if ggx is not None:
        A = A - _bc(k * s2) * ggx
    sA = ggw_ * s1 - k * (t1 * s2 + t2 * s1)
    sAx = ggw_ * s2 - 2 * k * t2 * s2
    g_x = _bc(rstd) * (A - _bc(sA / M) - xh * _bc(sAx / M)) - xh * _bc(R * rstd * rstd / M)
    return g_gy, g_x, g_w
