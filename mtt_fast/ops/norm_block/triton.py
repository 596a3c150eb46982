"""Norm block launchers in Triton: one program per (n, c) plane, looping over the plane in
``BLOCK``-pixel chunks (sums in fixed order: deterministic).

Same contract and equations as :mod:`.torch_impl` (and ``csrc/norm_block_math.h``).
float32 / float64 (computed in the input's dtype). On CPU tensors the kernels run only
under the Triton interpreter (``TRITON_INTERPRET=1`` set before triton is imported).
Importing this module never fails and never touches a GPU.
"""

from __future__ import annotations

import torch

from mtt_fast.ops._triton import IMPORT_ERROR as _IMPORT_ERROR
from mtt_fast.ops._triton import jit as _jit
from mtt_fast.ops._triton import tl, triton  # noqa: F401

__all__ = ["forward", "backward", "double_backward", "available"]


@_jit
def _fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, C, H, W, eps,
                BLOCK: tl.constexpr):
    p = tl.program_id(0)
    c = p % C
    M = H * W
    Wo = W // 2
    Mo = (H // 2) * Wo
    ct = x_ptr.dtype.element_ty
    xb = x_ptr + p.to(tl.int64) * M
    acc = tl.zeros([BLOCK], dtype=ct)
    for s in range(0, M, BLOCK):
        o = s + tl.arange(0, BLOCK)
        acc += tl.load(xb + o, mask=o < M, other=0.0)
    mean = tl.sum(acc, 0) / M
    acc = tl.zeros([BLOCK], dtype=ct)
    for s in range(0, M, BLOCK):
        o = s + tl.arange(0, BLOCK)
        d = tl.where(o < M, tl.load(xb + o, mask=o < M, other=0.0) - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, 0) / M + eps)
    tl.store(mean_ptr + p, mean)
    tl.store(rstd_ptr + p, rstd)
    w = tl.load(w_ptr + c)
    b = tl.load(b_ptr + c)
    yb = y_ptr + p.to(tl.int64) * Mo
    for s in range(0, Mo, BLOCK):
        o = s + tl.arange(0, BLOCK)
        m = o < Mo
        src = xb + (2 * (o // Wo)) * W + 2 * (o % Wo)
        z00 = w * ((tl.load(src, mask=m, other=0.0) - mean) * rstd) + b
        z01 = w * ((tl.load(src + 1, mask=m, other=0.0) - mean) * rstd) + b
        z10 = w * ((tl.load(src + W, mask=m, other=0.0) - mean) * rstd) + b
        z11 = w * ((tl.load(src + W + 1, mask=m, other=0.0) - mean) * rstd) + b
        v = tl.maximum(z00, 0.0) + tl.maximum(z01, 0.0) + tl.maximum(z10, 0.0) + tl.maximum(z11, 0.0)
        tl.store(yb + o, 0.25 * v, mask=m)


@_jit
def _gz(gy_b, xv, o, m, W, Wo, Ho, w, b, mean, rstd):
    # (gz, xh) of pixels o of one plane: [z > 0] * gy / 4 inside the pooled windows
    h = o // W
    j = o % W
    inside = m & (h < 2 * Ho) & (j < 2 * Wo)
    g = tl.load(gy_b + (h // 2) * Wo + j // 2, mask=inside, other=0.0)
    xh = (xv - mean) * rstd
    gz = tl.where((w * xh + b > 0) & inside, 0.25 * g, 0.0)
    return gz, xh


@_jit
def _bwd_kernel(gy_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, gx_ptr, parts_ptr, P, C, H, W,
                BLOCK: tl.constexpr):
    p = tl.program_id(0)
    c = p % C
    M = H * W
    Ho = H // 2
    Wo = W // 2
    ct = x_ptr.dtype.element_ty
    xb = x_ptr + p.to(tl.int64) * M
    gyb = gy_ptr + p.to(tl.int64) * (Ho * Wo)
    w = tl.load(w_ptr + c)
    b = tl.load(b_ptr + c)
    mean = tl.load(mean_ptr + p)
    r = tl.load(rstd_ptr + p)
    a1 = tl.zeros([BLOCK], dtype=ct)
    a2 = tl.zeros([BLOCK], dtype=ct)
    for s in range(0, M, BLOCK):
        o = s + tl.arange(0, BLOCK)
        m = o < M
        gz, xh = _gz(gyb, tl.load(xb + o, mask=m, other=0.0), o, m, W, Wo, Ho, w, b, mean, r)
        a1 += gz
        a2 += gz * xh
    s1 = tl.sum(a1, 0)
    s2 = tl.sum(a2, 0)
    wr = w * r
    a0 = -wr * s1 / M
    axh = -wr * s2 / M
    gxb = gx_ptr + p.to(tl.int64) * M
    for s in range(0, M, BLOCK):
        o = s + tl.arange(0, BLOCK)
        m = o < M
        gz, xh = _gz(gyb, tl.load(xb + o, mask=m, other=0.0), o, m, W, Wo, Ho, w, b, mean, r)
        tl.store(gxb + o, wr * gz + a0 + axh * xh, mask=m)
    tl.store(parts_ptr + p, s2)
    tl.store(parts_ptr + P + p, s1)


@_jit
def _dbwd_kernel(ggx_ptr, ggw_ptr, ggb_ptr, gy_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr,
                 ggy_ptr, gx_ptr, parts_ptr, C, H, W,
                 HAS_GGX: tl.constexpr, HAS_GGW: tl.constexpr, HAS_GGB: tl.constexpr,
                 BLOCK: tl.constexpr):
    p = tl.program_id(0)
    c = p % C
    M = H * W
    Ho = H // 2
    Wo = W // 2
    Mo = Ho * Wo
    ct = x_ptr.dtype.element_ty
    xb = x_ptr + p.to(tl.int64) * M
    gyb = gy_ptr + p.to(tl.int64) * Mo
    ggxb = ggx_ptr + p.to(tl.int64) * M
    w = tl.load(w_ptr + c)
    b = tl.load(b_ptr + c)
    mean = tl.load(mean_ptr + p)
    r = tl.load(rstd_ptr + p)
    ggw = tl.load(ggw_ptr + c) if HAS_GGW else 0.0
    ggb = tl.load(ggb_ptr + c) if HAS_GGB else 0.0
    a1 = tl.zeros([BLOCK], dtype=ct)
    a2 = tl.zeros([BLOCK], dtype=ct)
    a3 = tl.zeros([BLOCK], dtype=ct)
    a4 = tl.zeros([BLOCK], dtype=ct)
    a5 = tl.zeros([BLOCK], dtype=ct)
    for s in range(0, M, BLOCK):
        o = s + tl.arange(0, BLOCK)
        m = o < M
        gz, xh = _gz(gyb, tl.load(xb + o, mask=m, other=0.0), o, m, W, Wo, Ho, w, b, mean, r)
        a1 += gz
        a2 += gz * xh
        if HAS_GGX:
            gg = tl.load(ggxb + o, mask=m, other=0.0)
            a3 += gg
            a4 += gg * tl.where(m, xh, 0.0)
            a5 += gg * gz
    s1 = tl.sum(a1, 0)
    s2 = tl.sum(a2, 0)
    t1 = tl.sum(a3, 0)
    t2 = tl.sum(a4, 0)
    u = tl.sum(a5, 0)
    # coefficients: csrc/norm_block_math.h dbwd_coef
    wr = w * r
    k = wr / M
    q = u - (t1 * s1 + t2 * s2) / M
    R = w * q
    sA = ggw * s1 - k * (t1 * s2 + t2 * s1)
    sAx = ggw * s2 - 2.0 * k * t2 * s2
    c_gz = r * (ggw - k * t2)
    c_ggx = -r * k * s2
    c_0 = -r * sA / M
    c_xh = -(r * sAx + R * r * r) / M
    e_0 = ggb - wr * t1 / M
    e_xh = ggw - wr * t2 / M
    gxb = gx_ptr + p.to(tl.int64) * M
    for s in range(0, M, BLOCK):
        o = s + tl.arange(0, BLOCK)
        m = o < M
        gz, xh = _gz(gyb, tl.load(xb + o, mask=m, other=0.0), o, m, W, Wo, Ho, w, b, mean, r)
        v = c_gz * gz + c_0 + c_xh * xh
        if HAS_GGX:
            v += c_ggx * tl.load(ggxb + o, mask=m, other=0.0)
        tl.store(gxb + o, v, mask=m)
    ggyb = ggy_ptr + p.to(tl.int64) * Mo
    for s in range(0, Mo, BLOCK):
        o = s + tl.arange(0, BLOCK)
        m = o < Mo
        src = (2 * (o // Wo)) * W + 2 * (o % Wo)
        acc = tl.zeros([BLOCK], dtype=ct)
        for k2 in tl.static_range(4):
            off = src + (k2 // 2) * W + (k2 % 2)
            xh = (tl.load(xb + off, mask=m, other=0.0) - mean) * r
            d = e_0 + e_xh * xh
            if HAS_GGX:
                d += wr * tl.load(ggxb + off, mask=m, other=0.0)
            acc += tl.where(w * xh + b > 0, d, 0.0)
        tl.store(ggyb + o, 0.25 * acc, mask=m)
    tl.store(parts_ptr + p, r * q)


def available() -> bool:
    """Whether triton imported (the kernels still need a GPU or TRITON_INTERPRET=1)."""
    return _IMPORT_ERROR is None


def _block(m: int) -> int:
    return max(16, min(1024, triton.next_power_of_2(m)))


def _prep(x, *ts):
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"the Triton norm-block backend needs `triton` ({_IMPORT_ERROR})")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"norm_block (triton): expected float32 / float64, got {x.dtype}")
    return [t.contiguous() for t in (x, *ts)]


def forward(x, w, b, eps):
    """-> ``(y (N, C, H//2, W//2), mean (N, C), rstd (N, C))``."""
    x, w, b = _prep(x, w, b)
    N, C, H, W = x.shape
    y = x.new_empty(N, C, H // 2, W // 2)
    mean = x.new_empty(N, C)
    rstd = x.new_empty(N, C)
    _fwd_kernel[(N * C,)](x, w, b, y, mean, rstd, C, H, W, float(eps), BLOCK=_block(H * W))
    return y, mean, rstd


def backward(gy, x, w, b, mean, rstd):
    """-> ``(gx (N, C, H, W), gw (C,), gb (C,))``."""
    x, gy, w, b, mean, rstd = _prep(x, gy, w, b, mean, rstd)
    N, C, H, W = x.shape
    gx = torch.empty_like(x)
    parts = x.new_empty(2, N, C)
    _bwd_kernel[(N * C,)](gy, x, w, b, mean, rstd, gx, parts, N * C, C, H, W,
                          BLOCK=_block(H * W))
    s = parts.sum(1)
    return gx, s[0], s[1]


def double_backward(ggx, ggw, ggb, gy, x, w, b, mean, rstd):
    """Upstream grads (None = zero) -> ``(g_gy, g_x (N, C, H, W), g_w (C,))``."""
    x, gy, w, b, mean, rstd = _prep(x, gy, w, b, mean, rstd)
    N, C, H, W = x.shape
    g_gy = torch.empty_like(gy)
    g_x = torch.empty_like(x)
    parts = x.new_empty(N, C)
    dummy = x.new_empty(1)
    _dbwd_kernel[(N * C,)](
        ggx.contiguous() if ggx is not None else dummy,
        ggw.contiguous() if ggw is not None else dummy,
        ggb.contiguous() if ggb is not None else dummy,
        gy, x, w, b, mean, rstd, g_gy, g_x, parts, C, H, W,
        HAS_GGX=ggx is not None, HAS_GGW=ggw is not None, HAS_GGB=ggb is not None,
        BLOCK=_block(H * W),
    )
    return g_gy, g_x, parts.sum(0)
