"""Launchers of the twice-differentiable convolution, on ATen's convolution primitives.

``y = conv(x, W) + b``. The backward ``(gx, gW, gb) = (conv^T(gy, W), corr(x, gy),
sum gy)`` is one ``aten.convolution_backward``. Its backward, given the upstream
``(ggx, ggW, ggb)``, is bilinear algebra on the same primitives:

* ``d/d gy = conv(ggx, W) + conv(x, ggW) + ggb``  (forward convolutions);
* ``d/d x  = conv^T(gy, ggW)``                   (a backward-data convolution);
* ``d/d W  = corr(ggx, gy)``                     (a backward-weights convolution).

PyTorch's own double backward (``_convolution_double_backward``) computes ``d/d W`` as a
convolution with batch and channels swapped and the whole feature map as the kernel, which
is several times slower on CPU for the ConvNet's shapes; here every term runs on the
primitive made for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_aten = torch.ops.aten


def _cbw(gy, x, w, padding, mask, bias=False):
    return _aten.convolution_backward(
        gy, x, w, [w.shape[0]] if bias else None, [1, 1], list(padding), [1, 1], False,
        [0, 0], 1, mask,
    )


def _small_input_grad(x, w) -> bool:
    # oneDNN's backward-data is slow for few input channels (the ConvNet's first layer,
    # 3 -> 128: 2.4x slower than a GEMM + col2im on the project's CPU)
    return x.device.type == "cpu" and w.shape[1] * w.shape[2] * w.shape[3] <= 64


def _input_grad(gy, x, w, padding):
    """``conv^T(gy, w)``: the gradient wrt ``x`` (N, Ci, H, W)."""
    if not _small_input_grad(x, w):
        return _cbw(gy, x, w, padding, [True, False, False])[0]
    N, Co, Ho, Wo = gy.shape
    # (N, Ci*kh*kw, L) = W^T @ gy_n, batched over a stride-0 weight: no copy of gy
    cols = torch.bmm(w.reshape(Co, -1).t().expand(N, -1, -1), gy.reshape(N, Co, Ho * Wo))
    return F.fold(cols, tuple(x.shape[2:]), tuple(w.shape[2:]), padding=tuple(padding))


def forward(x, w, b, padding):
    """-> y (N, Co, Ho, Wo)."""
    return F.conv2d(x, w, b, padding=padding)


def backward(gy, x, w, padding, need):
    """``need = (x, w, b)`` flags -> ``(gx | None, gw | None, gb | None)``."""
    if need[0] and _small_input_grad(x, w):
        gx = _input_grad(gy, x, w, padding)
        gw = gb = None
        if need[1] or need[2]:
            _, gw, gb = _cbw(gy, x, w, padding, [False, need[1], need[2]], bias=need[2])
    else:
        gx, gw, gb = _cbw(gy, x, w, padding, list(need), bias=need[2])
    return (gx if need[0] else None, gw if need[1] else None, gb if need[2] else None)


def double_backward(ggx, ggw, ggb, gy, x, w, padding, need):
    """Upstream grads of ``(gx, gw, gb)`` (None = zero); ``need = (gy, x, w)`` flags.

    Returns ``(g_gy, g_x, g_w)``, each None when not needed or zero.
    """
    g_gy = g_x = g_w = None
    if need[0]:
        if ggw is not None:
            g_gy = F.conv2d(x, ggw, ggb, padding=padding)
        elif ggb is not None:
            g_gy = ggb[:, None, None].expand(gy.shape[1:]).expand(gy.shape).contiguous()
        if ggx is not None:
            t = F.conv2d(ggx, w, None, padding=padding)
            g_gy = t if g_gy is None else g_gy.add_(t)
    if need[1] and ggw is not None:
        g_x = _input_grad(gy, x, ggw, padding)
    if need[2] and ggx is not None:
        g_w = _cbw(gy, ggx, w, padding, [False, True, False])[1]
    return g_gy, g_x, g_w
