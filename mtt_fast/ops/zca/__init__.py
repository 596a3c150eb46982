"""ZCA whitening: the ``zca_apply`` op (validation, the one autograd Function, dispatch)
and the one fit.

The specification (fit, apply, inverse) is :mod:`.reference`; :class:`mtt_fast.data.ZCA`
holds a fitted state and calls these functions. ``zca_apply`` backends (declared below with
:func:`mtt_fast.backends.register`, best first for ``auto``):

* ``native``: the compiled ``torch.ops.mtt_fast.zca_apply`` (:mod:`.native`);
* ``triton``: one fused Triton kernel (:mod:`.triton`); implicit on CUDA tensors only;
* ``torch``: the reference (:mod:`.reference`).

The kernels compute in float32 and take uint8 / float16 / bfloat16 / float32 images; float64
images are computed in float64 by the reference alone (``auto`` sends them there; an
explicit kernel backend for float64 is a ``ValueError``).

Gradient contract, the same for every backend: float ``x`` gets its gradient
``(g @ matrix^T) * scale`` (dtype of ``x``), computed by one matmul in plain PyTorch, so the
backward is itself differentiable. The fitted ``mean`` and ``matrix`` are constants and get
none; passing one that requires grad while grad mode is on is a ``ValueError``
(differentiate :func:`.reference.zca_apply` directly for that).
"""

from __future__ import annotations

from types import ModuleType

import torch

from mtt_fast import backends
from mtt_fast.ops.zca.reference import compute_dtype, default_scale, zca_fit, zca_inverse

__all__ = ["zca_apply", "zca_fit", "zca_inverse"]

_KERNEL_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
backends.register(
    "zca",
    backends.Backend(
        "native", "mtt_fast.ops.zca.native", _KERNEL_DTYPES, runtime=backends.compiled("zca_apply")
    ),
    backends.Backend(
        "triton",
        "mtt_fast.ops.zca.triton",
        _KERNEL_DTYPES,
        runtime=backends.triton_runtime,
        auto_devices=("cuda",),
    ),
    backends.Backend("torch", "mtt_fast.ops.zca.reference", (*_KERNEL_DTYPES, torch.float64)),
)


class _ZCAFunction(torch.autograd.Function):
    """``impl.zca_apply(x, mean, matrix, scale)``; gradient to ``x`` only, by a matmul in
    plain PyTorch (differentiable again)."""

    @staticmethod
    def forward(ctx, impl: ModuleType, x, mean, matrix, scale: float):
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(matrix)
            ctx.scale, ctx.x_dtype = scale, x.dtype
        return impl.zca_apply(x, mean, matrix, scale)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        gx = None
        if ctx.needs_input_grad[1]:
            (matrix,) = ctx.saved_tensors
            flat = g.reshape(g.shape[0], -1).to(matrix.dtype)
            gx = ((flat @ matrix.T) * ctx.scale).reshape(g.shape).to(ctx.x_dtype)
        return None, gx, None, None, None


def _check(x, mean, matrix) -> None:
    def shape(t) -> str:
        return str(tuple(t.shape)) if torch.is_tensor(t) else type(t).__name__

    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"x: expected a (N, C, H, W) tensor, got {shape(x)}")
    if not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise ValueError(f"x: expected uint8 or float, got {x.dtype}")
    D = x.shape[1] * x.shape[2] * x.shape[3]
    for name, t, want in (("mean", mean, (D,)), ("matrix", matrix, (D, D))):
        if not torch.is_tensor(t) or tuple(t.shape) != want:
            raise ValueError(
                f"{name}: expected shape {want} (D = C*H*W of x {tuple(x.shape)}), got {shape(t)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor, got {t.dtype}")
        if t.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{name}: the fitted ZCA state gets no gradient, but {name} requires grad; "
                "detach it (or differentiate mtt_fast.ops.zca.reference.zca_apply directly)"
            )


def zca_apply(
    x: torch.Tensor,
    mean: torch.Tensor,
    matrix: torch.Tensor,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Whiten images: ``((x * scale).flatten(1) - mean) @ matrix``.

    Args:
        x: (N, C, H, W) uint8 or float images (any layout).
        mean: (D,) float mean image, D = C*H*W.
        matrix: (D, D) float whitening (or any) matrix, row-vector convention.
        scale: multiplies ``x`` first; default ``1/255`` for uint8 and ``1`` for float.
        backend: ``None`` (``MTT_FAST_BACKEND``, else auto) | ``"auto"`` | ``"torch"`` |
            ``"native"`` | ``"triton"``. The one used is recorded in
            ``mtt_fast.backends.last_used["zca"]``.

    Returns:
        (N, C, H, W) on ``x``'s device: float64 for float64 ``x``, else float32.

    Raises:
        ValueError: a bad argument (named, with the expected and the given shape or dtype),
            or an unknown / unavailable backend (listing the available ones).
    """
    _check(x, mean, matrix)
    s = default_scale(x, scale)
    ct = compute_dtype(x.dtype)
    mean = mean.detach().to(device=x.device, dtype=ct).contiguous()
    matrix = matrix.detach().to(device=x.device, dtype=ct).contiguous()
    impl = backends.dispatch("zca", backend, x)
    return _ZCAFunction.apply(impl, x.contiguous(), mean, matrix, s)
