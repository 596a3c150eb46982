"""Triton kernels for the DSA ops, forward and backward with respect to the images.

Same signatures and semantics as :mod:`mtt_fast.ops.dsa.reference` (the spec). Each op is a
``torch.autograd.Function`` whose backward launches a Triton kernel.

* The backward is **first order only** (``once_differentiable``): it is not itself
  differentiable. MTT never needs more: the student's gradient ``g_i = dl/dtheta`` does
  not flow through the augmentation, so the meta-gradient only uses one VJP of it.
* Gradients flow to the images only; the augmentation parameters (``theta``, ``mask``,
  ``shift``, ``center``, the color factors) are sampled constants and get none. Passing a
  parameter that requires grad (with grad mode on) raises; use the reference for that.
* Dtypes: float32, float16 and bfloat16 images are computed in float32; float64 images are
  computed in float64. Outputs and gradients have the dtype of ``x``.
* Inputs may be non-contiguous (they are made contiguous); outputs are contiguous NCHW.
* ``flip``, ``crop`` and ``cutout`` are exact copies (bit-identical to the reference up to
  the sign of zeros). ``affine``'s backward scatters with ``tl.atomic_add`` into a float32
  (float64) buffer, so on a GPU its summation order, like ``grid_sample``'s CUDA backward,
  is not deterministic; every forward is deterministic (``color`` reduces per image in a
  fixed order, without atomics), so a replayed augmentation is bit-identical.

On CPU tensors the kernels run only under the Triton interpreter (``TRITON_INTERPRET=1``
set before triton is imported). This module imports without triton; calling an op then
raises ``RuntimeError``. Nothing here touches a GPU at import time.
"""

from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl

    _jit = triton.jit
    _IMPORT_ERROR: Exception | None = None
except ImportError as _exc:  # pragma: no cover - exercised only without triton
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _IMPORT_ERROR = _exc

    def _jit(fn):  # kernels stay plain (never launched) functions
        return fn


__all__ = ["affine", "flip", "crop", "cutout", "color", "available"]

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


def _check_x(x: torch.Tensor, op: str) -> None:
    if _IMPORT_ERROR is not None:
        raise RuntimeError(
            f"the Triton DSA backend needs the `triton` package, which failed to import "
            f"({_IMPORT_ERROR}); use backend='torch' or 'native'"
        )
    if not torch.is_tensor(x) or x.dim() != 4:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"dsa.triton.{op}: expected images of shape (B, C, H, W), got {got}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"dsa.triton.{op}: expected floating images, got dtype {x.dtype}")
    if x.device.type == "cpu" and not _interpreted():
        raise RuntimeError(
            f"dsa.triton.{op}: Triton runs on CPU tensors only through its interpreter; set "
            "TRITON_INTERPRET=1 before triton is imported, or use a CUDA tensor"
        )
    if x.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"dsa.triton.{op}: unsupported device {x.device}")


def _no_param_grad(op: str, **params: torch.Tensor) -> None:
    if not torch.is_grad_enabled():
        return
    for name, t in params.items():
        if torch.is_tensor(t) and t.requires_grad:
            raise NotImplementedError(
                f"dsa.triton.{op}: no gradient for the parameter {name!r} (it requires grad); "
                "use backend='torch' to differentiate the augmentation parameters"
            )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _block(hw: int, cap: int = 1024) -> int:
    return max(16, min(cap, triton.next_power_of_2(hw)))


def _per_image(t: torch.Tensor, B: int, name: str, op: str, dtype, device) -> torch.Tensor:
    t = torch.as_tensor(t).reshape(-1)
    if t.numel() == 1 and B != 1:
        t = t.expand(B)
    if t.numel() != B:
        raise ValueError(f"dsa.triton.{op}: {name} must have shape ({B},), got {tuple(t.shape)}")
    return t.to(device=device, dtype=dtype).contiguous()


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


# --------------------------------------------------------------------------- autograd


class _Affine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(theta)
        ctx.x_dtype = x.dtype
        return _affine_fwd(x, theta)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        (theta,) = ctx.saved_tensors
        gx = _affine_bwd(g.contiguous(), theta, ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return gx, None


class _Flip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return _remap(x, mask, _FLIP)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        (mask,) = ctx.saved_tensors
        gx = _remap(g.contiguous(), mask, _FLIP) if ctx.needs_input_grad[0] else None
        return gx, None


class _Crop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(shift)
        return _remap(x, shift, _CROP, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        (shift,) = ctx.saved_tensors
        gx = _remap(g.contiguous(), shift, _CROP, -1) if ctx.needs_input_grad[0] else None
        return gx, None


class _Cutout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, center: torch.Tensor, size: tuple[int, int]):
        ctx.save_for_backward(center)
        ctx.size = size
        return _remap(x, center, _CUTOUT, 1, size)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        (center,) = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[0]:
            gx = _remap(g.contiguous(), center, _CUTOUT, 1, ctx.size)
        return gx, None, None


class _Color(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, s, k):
        ctx.save_for_backward(s, k)
        return _color_launch(x, b, s, k)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        s, k = ctx.saved_tensors
        gx = _color_launch(g.contiguous(), None, s, k) if ctx.needs_input_grad[0] else None
        return gx, None, None, None


# --------------------------------------------------------------------------- public ops


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling on the affine grid ``theta`` (scale, rotate); see the reference.

    Args:
        x: (B, C, H, W) images.
        theta: (B, 2, 3) affine matrices in normalised coordinates (align_corners=True);
            no gradient.

    Returns:
        (B, C, H, W), dtype of ``x``; samples outside the image read zero. The backward
        (first order only) scatters with atomics.
    """
    _check_x(x, "affine")
    _no_param_grad("affine", theta=theta)
    B = x.shape[0]
    if tuple(theta.shape) != (B, 2, 3):
        raise ValueError(f"dsa.triton.affine: theta must have shape ({B}, 2, 3), got {tuple(theta.shape)}")
    theta = theta.detach().to(device=x.device, dtype=_compute_dtype(x.dtype)).contiguous()
    return _Affine.apply(x.contiguous(), theta)


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Horizontal flip (along W) of the images where ``mask`` is True.

    Args:
        x: (B, C, H, W) images.
        mask: (B,) bool.

    Returns:
        (B, C, H, W); the backward (first order only) is the same flip.
    """
    _check_x(x, "flip")
    B = x.shape[0]
    mask = mask.reshape(-1)
    if mask.numel() != B:
        raise ValueError(f"dsa.triton.flip: mask must have shape ({B},), got {tuple(mask.shape)}")
    mask = mask.detach().to(device=x.device).contiguous()
    return _Flip.apply(x.contiguous(), mask)


def crop(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Integer translation with zero border: ``out[b, :, i, j] = x[b, :, i + dy, j + dx]``.

    Args:
        x: (B, C, H, W) images.
        shift: (B, 2) integer ``(dy, dx)`` per image.

    Returns:
        (B, C, H, W); the backward (first order only) is the crop by ``-shift``.
    """
    _check_x(x, "crop")
    B = x.shape[0]
    if tuple(shift.shape) != (B, 2):
        raise ValueError(f"dsa.triton.crop: shift must have shape ({B}, 2), got {tuple(shift.shape)}")
    shift = shift.detach().to(device=x.device, dtype=torch.int64).contiguous()
    return _Crop.apply(x.contiguous(), shift)


def cutout(x: torch.Tensor, center: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero a ``size = (h, w)`` square per image (rows ``[cy - h // 2, cy - h // 2 + h)``).

    Args:
        x: (B, C, H, W) images.
        center: (B, 2) integer ``(cy, cx)`` per image.
        size: ``(h, w)`` python ints.

    Returns:
        (B, C, H, W); the backward (first order only) masks the gradient the same way.
    """
    _check_x(x, "cutout")
    B = x.shape[0]
    if tuple(center.shape) != (B, 2):
        raise ValueError(f"dsa.triton.cutout: center must have shape ({B}, 2), got {tuple(center.shape)}")
    h, w = (int(v) for v in size)
    if h < 0 or w < 0:
        raise ValueError(f"dsa.triton.cutout: size must be >= 0, got {tuple(size)}")
    center = center.detach().to(device=x.device, dtype=torch.int64).contiguous()
    return _Cutout.apply(x.contiguous(), center, (h, w))


def color(
    x: torch.Tensor,
    brightness: torch.Tensor,
    saturation: torch.Tensor,
    contrast: torch.Tensor,
) -> torch.Tensor:
    """Brightness, then saturation, then contrast, fused into one kernel (two sweeps).

    Args:
        x: (B, C, H, W) images.
        brightness: (B,) added to every pixel.
        saturation: (B,) factor about the per-pixel channel mean.
        contrast: (B,) factor about the per-image mean over (C, H, W).

    Returns:
        (B, C, H, W). The backward (first order only, one kernel) is
        ``c * (s * g + (1 - s) * mean_c(g)) + (1 - c) * mean_chw(g)``.
    """
    _check_x(x, "color")
    _no_param_grad("color", brightness=brightness, saturation=saturation, contrast=contrast)
    B = x.shape[0]
    ct = _compute_dtype(x.dtype)
    b = _per_image(brightness.detach(), B, "brightness", "color", ct, x.device)
    s = _per_image(saturation.detach(), B, "saturation", "color", ct, x.device)
    k = _per_image(contrast.detach(), B, "contrast", "color", ct, x.device)
    return _Color.apply(x.contiguous(), b, s, k)
