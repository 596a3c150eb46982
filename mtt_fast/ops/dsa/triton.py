"""Launchers of the ``triton`` DSA backend: Triton kernels for the DSA ops and their
adjoints (the backward with respect to the images).

Plain functions on tensors, no autograd: :mod:`mtt_fast.ops.dsa` validates the arguments,
wraps these in its autograd Function and calls them with contiguous images and parameters
on the images' device, in the compute dtype. Signatures are those of
:mod:`mtt_fast.ops.dsa.reference`.

* Dtypes: float32, float16 and bfloat16 images are computed in float32 (the parameters
  come in float32); float64 images in float64. Outputs have the dtype of ``x``.
* ``flip``, ``crop`` and ``cutout`` are exact copies (bit-identical to the reference up to
  the sign of zeros). ``affine_adjoint`` scatters with ``tl.atomic_add`` into a float32
  (float64) buffer, so on a GPU its summation order, like ``grid_sample``'s CUDA backward,
  is not deterministic; every forward is deterministic (``color`` reduces per image in a
  fixed order, without atomics), so a replayed augmentation is bit-identical.

On CPU tensors the kernels run only under the Triton interpreter (``TRITON_INTERPRET=1``
set before triton is imported). This module imports without triton; calling a launcher
then raises ``RuntimeError``. Nothing here touches a GPU at import time.
"""

from __future__ import annotations

import contextlib

import torch

from mtt_fast.ops._triton import IMPORT_ERROR as _IMPORT_ERROR
from mtt_fast.ops._triton import jit as _jit
from mtt_fast.ops._triton import tl, triton  # noqa: F401

__all__ = [
    "affine",
    "affine_adjoint",
    "flip",
    "crop",
    "crop_adjoint",
    "cutout",
    "color",
    "color_adjoint",
    "available",
]

_FLIP, _CROP, _CUTOUT = 0, 1, 2


# --------------------------------------------------------------------------- kernels


@_jit
def _bilinear_taps(theta_ptr, b, offs, m, H, W):
    # Source offsets, masks and weights of the 4 bilinear taps of output pixels ``offs``
    # of image ``b`` (zeros padding: an out-of-image tap is masked off).
    i = offs // W
    j = offs % W
    ct = theta_ptr.dtype.element_ty
    tp = theta_ptr + b * 6
    t00 = tl.load(tp + 0)
    t01 = tl.load(tp + 1)
    t02 = tl.load(tp + 2)
    t10 = tl.load(tp + 3)
    t11 = tl.load(tp + 4)
    t12 = tl.load(tp + 5)
    # normalised output coordinates (align_corners=True): xn = (2j - (W-1)) / (W-1), an
    # exact numerator and one rounding; a size-1 axis sits at 0, as in torch's affine_grid.
    wm1 = W - 1
    hm1 = H - 1
    xn = (2 * j - wm1).to(ct) / tl.maximum(wm1, 1).to(ct)
    yn = (2 * i - hm1).to(ct) / tl.maximum(hm1, 1).to(ct)
    sx = t00 * xn + t01 * yn + t02
    sy = t10 * xn + t11 * yn + t12
    # source pixel = (src + 1) / 2 * (size - 1)
    ix = (sx + 1) * 0.5 * wm1.to(ct)
    iy = (sy + 1) * 0.5 * hm1.to(ct)
    # clamping far-outside points keeps the int cast defined and still reads zero
    ix = tl.minimum(tl.maximum(ix, -2.0), (W + 1).to(ct))
    iy = tl.minimum(tl.maximum(iy, -2.0), (H + 1).to(ct))
    fx0 = tl.floor(ix)
    fy0 = tl.floor(iy)
    ax = ix - fx0
    ay = iy - fy0
    cx0 = fx0.to(tl.int32)
    cy0 = fy0.to(tl.int32)
    vx0 = (cx0 >= 0) & (cx0 < W)
    vx1 = (cx0 + 1 >= 0) & (cx0 + 1 < W)
    vy0 = (cy0 >= 0) & (cy0 < H)
    vy1 = (cy0 + 1 >= 0) & (cy0 + 1 < H)
    o00 = cy0 * W + cx0
    return (
        o00, o00 + 1, o00 + W, o00 + W + 1,
        m & vy0 & vx0, m & vy0 & vx1, m & vy1 & vx0, m & vy1 & vx1,
        (1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay,
    )


@_jit
def _affine_fwd_kernel(x_ptr, theta_ptr, out_ptr, C, H, W, BLOCK: tl.constexpr):
    # grid: (cdiv(H * W, BLOCK), B); one program handles BLOCK output pixels, all channels.
    pid = tl.program_id(0)
    b = tl.program_id(1)
    HW = H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW
    ct = theta_ptr.dtype.element_ty
    o00, o01, o10, o11, m00, m01, m10, m11, w00, w01, w10, w11 = _bilinear_taps(
        theta_ptr, b, offs, m, H, W
    )
    for c in range(0, C):
        base = (b * C + c).to(tl.int64) * HW
        src = x_ptr + base
        v = tl.load(src + o00, mask=m00, other=0.0).to(ct) * w00
        v += tl.load(src + o01, mask=m01, other=0.0).to(ct) * w01
        v += tl.load(src + o10, mask=m10, other=0.0).to(ct) * w10
        v += tl.load(src + o11, mask=m11, other=0.0).to(ct) * w11
        tl.store(out_ptr + base + offs, v.to(out_ptr.dtype.element_ty), mask=m)


@_jit
def _affine_bwd_kernel(g_ptr, theta_ptr, gx_ptr, C, H, W, BLOCK: tl.constexpr):
    # Same taps as the forward; scatters w * g into the 4 source pixels of each output.
    # gx_ptr is a zeroed buffer of the compute dtype (float32 / float64).
    pid = tl.program_id(0)
    b = tl.program_id(1)
    HW = H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW
    ct = theta_ptr.dtype.element_ty
    o00, o01, o10, o11, m00, m01, m10, m11, w00, w01, w10, w11 = _bilinear_taps(
        theta_ptr, b, offs, m, H, W
    )
    for c in range(0, C):
        base = (b * C + c).to(tl.int64) * HW
        g = tl.load(g_ptr + base + offs, mask=m, other=0.0).to(ct)
        dst = gx_ptr + base
        tl.atomic_add(dst + o00, g * w00, mask=m00, sem="relaxed")
        tl.atomic_add(dst + o01, g * w01, mask=m01, sem="relaxed")
        tl.atomic_add(dst + o10, g * w10, mask=m10, sem="relaxed")
        tl.atomic_add(dst + o11, g * w11, mask=m11, sem="relaxed")


@_jit
def _remap_kernel(
    src_ptr, dst_ptr, p_ptr, sign, C, H, W, half_h, half_w, ch, cw,
    MODE: tl.constexpr, BLOCK: tl.constexpr,
):
    # Integer remaps, all channels of one image per program; grid (cdiv(H * W, BLOCK), B).
    # MODE 0 flip:   dst[i, j] = src[i, W - 1 - j] where p[b] else src[i, j]
    # MODE 1 crop:   dst[i, j] = src[i + sign * dy, j + sign * dx], zero outside
    #                (sign=-1 is the adjoint, i.e. the backward)
    # MODE 2 cutout: dst = src with rows [cy - half_h, + ch) x cols [cx - half_w, + cw) zeroed
    pid = tl.program_id(0)
    b = tl.program_id(1)
    HW = H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW
    i = offs // W
    j = offs % W
    if MODE == 0:
        f = tl.load(p_ptr + b)
        sj = tl.where(f != 0, W - 1 - j, j)
        so = i * W + sj
        keep = m
    elif MODE == 1:
        sy = tl.load(p_ptr + 2 * b) * sign
        sx = tl.load(p_ptr + 2 * b + 1) * sign
        si = i + sy
        sj = j + sx
        keep = m & (si >= 0) & (si < H) & (sj >= 0) & (sj < W)
        so = si * W + sj
    else:
        top = tl.load(p_ptr + 2 * b) - half_h
        left = tl.load(p_ptr + 2 * b + 1) - half_w
        inside = (i >= top) & (i < top + ch) & (j >= left) & (j < left + cw)
        keep = m & (inside == 0)
        so = offs
    for c in range(0, C):
        base = (b * C + c).to(tl.int64) * HW
        v = tl.load(src_ptr + base + so, mask=keep, other=0.0)
        tl.store(dst_ptr + base + offs, v, mask=m)


@_jit
def _color_kernel(
    x_ptr, out_ptr, b_ptr, s_ptr, c_ptr, C, HW, c_f, n_f,
    HAS_B: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    # One program per image; two sweeps over its pixels: the first accumulates the image
    # mean after brightness + saturation (a fixed-order reduction, so deterministic), the
    # second recomputes that and applies contrast. Per-pixel channel means stay in registers.
    # The backward is this kernel on the upstream gradient with HAS_B=False (the op is
    # affine in x with a self-adjoint linear part).
    img = tl.program_id(0)
    ct = s_ptr.dtype.element_ty
    base = img.to(tl.int64) * C * HW
    chan = tl.arange(0, C_PAD)[:, None]
    cmask = chan < C
    s = tl.load(s_ptr + img)
    k = tl.load(c_ptr + img)
    if HAS_B:
        bright = tl.load(b_ptr + img)
    acc = tl.zeros([BLOCK], dtype=ct)
    for start in range(0, HW, BLOCK):
        p = start + tl.arange(0, BLOCK)[None, :]
        msk = cmask & (p < HW)
        v = tl.load(x_ptr + base + chan * HW + p, mask=msk, other=0.0).to(ct)
        if HAS_B:
            v = v + bright
        m1 = tl.sum(tl.where(msk, v, 0.0), axis=0) / c_f
        v = (v - m1[None, :]) * s + m1[None, :]
        acc += tl.sum(tl.where(msk, v, 0.0), axis=0)
    m2 = tl.sum(acc, axis=0) / n_f
    for start in range(0, HW, BLOCK):
        p = start + tl.arange(0, BLOCK)[None, :]
        msk = cmask & (p < HW)
        v = tl.load(x_ptr + base + chan * HW + p, mask=msk, other=0.0).to(ct)
        if HAS_B:
            v = v + bright
        m1 = tl.sum(tl.where(msk, v, 0.0), axis=0) / c_f
        v = (v - m1[None, :]) * s + m1[None, :]
        y = (v - m2) * k + m2
        tl.store(out_ptr + base + chan * HW + p, y.to(out_ptr.dtype.element_ty), mask=msk)


# --------------------------------------------------------------------------- helpers


def available() -> bool:
    """Whether triton imported (the kernels can still need a GPU or TRITON_INTERPRET=1)."""
    return _IMPORT_ERROR is None


def _interpreted() -> bool:
    return type(_remap_kernel).__name__ == "InterpretedFunction"


def _require(x: torch.Tensor) -> None:
    if _IMPORT_ERROR is not None:
        raise RuntimeError(
            f"the Triton DSA backend needs the `triton` package, which failed to import "
            f"({_IMPORT_ERROR}); use backend='torch' or 'native'"
        )
    if x.device.type == "cpu" and not _interpreted():
        raise RuntimeError(
            "Triton runs on CPU tensors only through its interpreter; set "
            "TRITON_INTERPRET=1 before triton is imported, or use a CUDA tensor"
        )


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _block(hw: int, cap: int = 1024) -> int:
    return max(16, min(cap, triton.next_power_of_2(hw)))


# --------------------------------------------------------------------------- launchers


def _affine_fwd(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    BLOCK = _block(H * W)
    with _device_ctx(x):
        _affine_fwd_kernel[(triton.cdiv(H * W, BLOCK), B)](
            x, theta, out, C, H, W, BLOCK=BLOCK
        )
    return out


def _affine_bwd(g: torch.Tensor, theta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    B, C, H, W = g.shape
    gx = torch.zeros(g.shape, dtype=theta.dtype, device=g.device)
    if gx.numel() == 0:
        return gx.to(dtype)
    BLOCK = _block(H * W)
    with _device_ctx(g):
        _affine_bwd_kernel[(triton.cdiv(H * W, BLOCK), B)](
            g, theta, gx, C, H, W, BLOCK=BLOCK
        )
    return gx.to(dtype)


def _remap(
    x: torch.Tensor, p: torch.Tensor, mode: int, sign: int = 1, size: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    B, C, H, W = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    h, w = int(size[0]), int(size[1])
    BLOCK = _block(H * W)
    with _device_ctx(x):
        _remap_kernel[(triton.cdiv(H * W, BLOCK), B)](
            x, out, p, sign, C, H, W, h // 2, w // 2, h, w, MODE=mode, BLOCK=BLOCK
        )
    return out


def _color_launch(
    x: torch.Tensor,
    b: torch.Tensor | None,
    s: torch.Tensor,
    k: torch.Tensor,
) -> torch.Tensor:
    B, C, H, W = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    HW = H * W
    C_PAD = triton.next_power_of_2(C)
    BLOCK = max(16, min(triton.next_power_of_2(HW), max(16, 4096 // C_PAD)))
    with _device_ctx(x):
        _color_kernel[(B,)](
            x, out, b if b is not None else s, s, k, C, HW, float(C), float(C * HW),
            HAS_B=b is not None, C_PAD=C_PAD, BLOCK=BLOCK,
        )
    return out


# --------------------------------------------------------------------------- public launchers


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling on ``theta: (B, 2, 3)`` (compute dtype); zeros outside."""
    _require(x)
    return _affine_fwd(x, theta)


def affine_adjoint(g: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Transpose of :func:`affine` in ``x``: scatters ``w * g`` onto the bilinear taps."""
    _require(g)
    return _affine_bwd(g, theta, g.dtype)


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip along W where ``mask: (B,)`` bool; its own adjoint."""
    _require(x)
    return _remap(x, mask, _FLIP)


def crop(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Integer translation by ``shift: (B, 2)`` int64 with zero border."""
    _require(x)
    return _remap(x, shift, _CROP, 1)


def crop_adjoint(g: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Transpose of :func:`crop`: the same kernel reading at ``-shift``."""
    _require(g)
    return _remap(g, shift, _CROP, -1)


def cutout(x: torch.Tensor, center: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero a ``size = (h, w)`` square at ``center: (B, 2)`` int64; its own adjoint."""
    _require(x)
    return _remap(x, center, _CUTOUT, 1, size)


def color(
    x: torch.Tensor, brightness: torch.Tensor, saturation: torch.Tensor, contrast: torch.Tensor
) -> torch.Tensor:
    """Brightness, saturation, contrast (each (B,)) fused into one kernel (two sweeps)."""
    _require(x)
    return _color_launch(x, brightness, saturation, contrast)


def color_adjoint(
    g: torch.Tensor, brightness: torch.Tensor, saturation: torch.Tensor, contrast: torch.Tensor
) -> torch.Tensor:
    """Transpose of the linear part of :func:`color` (one kernel):
    ``c * (s * g + (1 - s) * mean_c(g)) + (1 - c) * mean_chw(g)``."""
    _require(g)
    return _color_launch(g, None, saturation, contrast)
