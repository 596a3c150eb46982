"""DSA ops (``affine``, ``flip``, ``crop``, ``cutout``, ``color``): validation, the one
autograd Function and the dispatch over the backends' launchers.

Backends (declared below with :func:`mtt_fast.backends.register`, best first for ``auto``):

* ``native``: the compiled ``torch.ops.mtt_fast.dsa_*`` ops (:mod:`.native`), float32 and
  float64 images;
* ``triton``: Triton kernels (:mod:`.triton`), float16 / bfloat16 / float32 / float64
  (halves computed in float32); implicit on CUDA tensors only;
* ``torch``: the reference (:mod:`.reference`, plain PyTorch: the spec), every float dtype.

Gradient contract, the same for every backend:

* ``x`` gets its gradient (dtype of ``x``). Every op is affine in ``x``: its backward applies
  the adjoint launcher of the same backend *through this same Function*, whose own backward
  is the op again. The backward is therefore differentiable to any order (double backward
  and ``gradgradcheck`` hold; the second derivative in ``x`` is zero). Trajectory matching
  needs only first order: the student's gradient ``g_i = dl/dtheta`` does not traverse the
  augmentation, and the meta-gradient applies one VJP of it per step.
* The augmentation parameters (``theta``, ``mask``, ``shift``, ``center``, ``brightness``,
  ``saturation``, ``contrast``) are sampled constants and never get a gradient; passing one
  that requires grad while grad mode is on is a ``ValueError`` (differentiate
  :mod:`mtt_fast.ops.dsa.reference` directly to learn them).

Outputs are contiguous ``(B, C, H, W)`` tensors of ``x``'s dtype; inputs may be
non-contiguous. The backend that ran is recorded in ``mtt_fast.backends.last_used["dsa"]``.
"""

from __future__ import annotations

import torch

from mtt_fast import backends

__all__ = ["OPS", "affine", "flip", "crop", "cutout", "color"]

OPS = ("affine", "flip", "crop", "cutout", "color")

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
backends.register(
    "dsa",
    backends.Backend(
        "native",
        "mtt_fast.ops.dsa.native",
        (torch.float32, torch.float64),
        runtime=backends.compiled("dsa_affine"),
    ),
    backends.Backend(
        "triton",
        "mtt_fast.ops.dsa.triton",
        _FLOATS,
        runtime=backends.triton_runtime,
        auto_devices=("cuda",),
    ),
    backends.Backend("torch", "mtt_fast.ops.dsa.reference", _FLOATS),
)

# The launcher applying the transpose of each launcher's linear part in x.
_ADJOINT = {
    "affine": "affine_adjoint",
    "affine_adjoint": "affine",
    "flip": "flip",
    "crop": "crop_adjoint",
    "crop_adjoint": "crop",
    "cutout": "cutout",
    "color": "color_adjoint",
    "color_adjoint": "color_adjoint",  # self-adjoint
}
_TENSOR = object()  # placeholder of a saved tensor among the parameters


class _DSAFunction(torch.autograd.Function):
    """``y = <launchers of backend>.<name>(x, *params)`` for a launcher affine in ``x``; the
    backward is the adjoint launcher through this same Function (so it is differentiable
    again). The backend travels by name (a constant to ``torch.compile``), never as a
    module."""

    @staticmethod
    def forward(ctx, name: str, backend: str, x: torch.Tensor, *params):
        if ctx.needs_input_grad[2]:
            ctx.name, ctx.backend, ctx.x_dtype = name, backend, x.dtype
            ctx.save_for_backward(*(p for p in params if torch.is_tensor(p)))
            ctx.slots = tuple(_TENSOR if torch.is_tensor(p) else p for p in params)
        return getattr(backends.launchers("dsa", backend), name)(x, *params)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        nones = (None,) * len(ctx.needs_input_grad[3:])
        if not ctx.needs_input_grad[2]:
            return (None, None, None, *nones)
        saved = iter(ctx.saved_tensors)
        params = [next(saved) if s is _TENSOR else s for s in ctx.slots]
        g = g.to(ctx.x_dtype).contiguous()
        adjoint = _ADJOINT[ctx.name]
        if torch.compiler.is_compiling():
            # dynamo traces this backward once, as a graph, and cannot trace a Function
            # applied inside it; the adjoint launcher is called directly (the same numbers:
            # a graph that AOTAutograd compiles is differentiable once anyway)
            gx = getattr(backends.launchers("dsa", ctx.backend), adjoint)(g, *params)
        else:
            gx = _DSAFunction.apply(adjoint, ctx.backend, g, *params)
        return (None, None, gx, *nones)


# ----------------------------------------------------------------------------- validation


def _shape(t) -> str:
    return str(tuple(t.shape)) if torch.is_tensor(t) else type(t).__name__


def _check_images(x) -> None:
    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"x: expected a (B, C, H, W) tensor, got {_shape(x)}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"x: expected a float16/bfloat16/float32/float64 tensor, got {x.dtype}")


def _param(
    name: str, t, x: torch.Tensor, shape: tuple[int, ...], kind: str
) -> torch.Tensor:
    """Check one augmentation parameter; return it detached, contiguous, on ``x``'s device
    in the dtype the launchers take (compute dtype for floats, int64, bool)."""
    if not torch.is_tensor(t) or tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {_shape(t)}")
    if kind == "float":
        ok, dtype = t.is_floating_point(), torch.float64 if x.dtype == torch.float64 else torch.float32
    elif kind == "integer":
        ok, dtype = not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool), torch.int64
    else:
        ok, dtype = not (t.is_floating_point() or t.is_complex()), torch.bool
    if not ok:
        what = {"float": "a float", "integer": "an integer", "bool": "a bool"}[kind]
        raise ValueError(f"{name}: expected {what} tensor, got {t.dtype}")
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{name}: augmentation parameters get no gradient, but {name} requires grad; "
            "detach it (or differentiate mtt_fast.ops.dsa.reference directly)"
        )
    return t.detach().to(device=x.device, dtype=dtype).contiguous()


def _run(name: str, backend: str | None, x: torch.Tensor, *params) -> torch.Tensor:
    chosen = backends.select("dsa", backend, x)
    return _DSAFunction.apply(name, chosen, x.contiguous(), *params)


# ----------------------------------------------------------------------------- public ops


def affine(x: torch.Tensor, theta: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Bilinear resampling on the affine grid ``theta`` (scale, rotate); zeros outside.

    Args:
        x: (B, C, H, W) float images.
        theta: (B, 2, 3) float affine matrices in normalised coordinates
            (align_corners=True), as ``F.affine_grid`` takes them.
        backend: ``None`` (``MTT_FAST_BACKEND``, else auto) | ``"auto"`` | ``"torch"`` |
            ``"native"`` | ``"triton"``.

    Returns:
        (B, C, H, W), dtype of ``x``.
    """
    _check_images(x)
    theta = _param("theta", theta, x, (x.shape[0], 2, 3), "float")
    return _run("affine", backend, x, theta)


def flip(x: torch.Tensor, mask: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Horizontal flip (along W) of the images where ``mask`` is True.

    Args:
        x: (B, C, H, W) float images.
        mask: (B,) bool (or integer, nonzero = flip).
        backend: as :func:`affine`.

    Returns:
        (B, C, H, W), dtype of ``x``.
    """
    _check_images(x)
    mask = _param("mask", mask, x, (x.shape[0],), "bool")
    return _run("flip", backend, x, mask)


def crop(x: torch.Tensor, shift: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Integer translation with zero border: ``out[b, :, i, j] = x[b, :, i + dy, j + dx]``.

    Args:
        x: (B, C, H, W) float images.
        shift: (B, 2) integer ``(dy, dx)`` per image.
        backend: as :func:`affine`.

    Returns:
        (B, C, H, W), dtype of ``x``.
    """
    _check_images(x)
    shift = _param("shift", shift, x, (x.shape[0], 2), "integer")
    return _run("crop", backend, x, shift)


def cutout(
    x: torch.Tensor, center: torch.Tensor, size: tuple[int, int], backend: str | None = None
) -> torch.Tensor:
    """Zero a ``size = (h, w)`` square per image: rows ``[cy - h // 2, cy - h // 2 + h)``
    and the same for columns, clipped to the image.

    Args:
        x: (B, C, H, W) float images.
        center: (B, 2) integer ``(cy, cx)`` per image.
        size: ``(h, w)`` non-negative ints.
        backend: as :func:`affine`.

    Returns:
        (B, C, H, W), dtype of ``x``.
    """
    _check_images(x)
    center = _param("center", center, x, (x.shape[0], 2), "integer")
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size: expected (h, w) ints, got {size!r}") from None
    if h < 0 or w < 0:
        raise ValueError(f"size: expected (h, w) >= 0, got {(h, w)}")
    return _run("cutout", backend, x, center, (h, w))


def color(
    x: torch.Tensor,
    brightness: torch.Tensor,
    saturation: torch.Tensor,
    contrast: torch.Tensor,
    backend: str | None = None,
) -> torch.Tensor:
    """Brightness, then saturation, then contrast, as the original DSA.

    ``x + b``; then ``(x - m) * s + m`` with ``m`` the per-pixel channel mean; then
    ``(x - m) * c + m`` with ``m`` the per-image mean over (C, H, W).

    Args:
        x: (B, C, H, W) float images.
        brightness, saturation, contrast: (B,) float factors.
        backend: as :func:`affine`.

    Returns:
        (B, C, H, W), dtype of ``x``.
    """
    _check_images(x)
    B = x.shape[0]
    b = _param("brightness", brightness, x, (B,), "float")
    s = _param("saturation", saturation, x, (B,), "float")
    c = _param("contrast", contrast, x, (B,), "float")
    return _run("color", backend, x, b, s, c)
