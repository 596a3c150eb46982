"""The ConvNet norm block, fused: instance norm (GroupNorm(C, C), affine) -> ReLU -> 2x2
average pooling, with an analytic backward that is itself differentiable once more.

:func:`norm_block` equals :func:`.reference.norm_block` (the spec, plain autograd). Its
backward is a second autograd Function whose own backward is the analytic double backward
(``torch_impl``'s module docstring has the equations), so ``torch.autograd.grad(...,
create_graph=True)`` followed by a second ``grad`` (what MTT's meta-gradient does) runs
three fused launches per block instead of autograd's composed elementwise graph. The double
backward is first order only (``once_differentiable``): third derivatives are not supported.

Backends (declared below with :func:`mtt_fast.backends.register`, best first for ``auto``;
one set of launchers each: ``forward``, ``backward``, ``double_backward``):

* ``native``: the compiled ``torch.ops.mtt_fast.norm_block_*`` for CPU and CUDA
  (:mod:`.native`), float32 / float64;
* ``triton``: Triton kernels (:mod:`.triton`), float32 / float64; implicit on CUDA only;
* ``torch``: plain PyTorch (:mod:`.torch_impl`), every float dtype.

The choice follows :func:`mtt_fast.backends.dispatch` (argument > ``MTT_FAST_BACKEND`` >
auto); the backend that ran is recorded in ``mtt_fast.backends.last_used["norm_block"]``.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from mtt_fast import backends
from mtt_fast.ops.norm_block import reference
from mtt_fast.ops.norm_block.reference import EPS

__all__ = ["norm_block", "reference", "EPS"]


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_KERNEL_DTYPES = (torch.float32, torch.float64)
backends.register(
    "norm_block",
    backends.Backend(
        "native",
        "mtt_fast.ops.norm_block.native",
        _KERNEL_DTYPES,
        runtime=backends.compiled("norm_block_forward"),
    ),
    backends.Backend(
        "triton",
        "mtt_fast.ops.norm_block.triton",
        _KERNEL_DTYPES,
        runtime=backends.triton_runtime,
        auto_devices=("cuda",),
    ),
    backends.Backend("torch", "mtt_fast.ops.norm_block.torch_impl", _FLOATS),
)


class _NormBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, eps, impl):
        y, mean, rstd = impl.forward(x, w, b, eps)
        ctx.save_for_backward(x, w, b, mean, rstd)
        ctx.impl = impl
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, b, mean, rstd = ctx.saved_tensors
        gx, gw, gb = _NormBlockBackward.apply(gy, x, w, b, mean, rstd, ctx.impl)
        return gx, gw, gb, None, None


class _NormBlockBackward(torch.autograd.Function):
    # The backward as a function of (gy, x, w, b); mean / rstd are constants given x.
    @staticmethod
    def forward(ctx, gy, x, w, b, mean, rstd, impl):
        ctx.set_materialize_grads(False)  # a missing upstream grad stays None, not zeros
        gy = gy.contiguous()
        ctx.save_for_backward(gy, x, w, b, mean, rstd)
        ctx.impl = impl
        return impl.backward(gy, x, w, b, mean, rstd)

    @staticmethod
    @once_differentiable
    def backward(ctx, ggx, ggw, ggb):
        gy, x, w, b, mean, rstd = ctx.saved_tensors
        if ggx is None and ggw is None and ggb is None:
            return (None,) * 7
        g_gy, g_x, g_w = ctx.impl.double_backward(ggx, ggw, ggb, gy, x, w, b, mean, rstd)
        # d/db is zero almost everywhere (b enters only through the ReLU mask)
        return g_gy, g_x, g_w, None, None, None, None


def _check(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> None:
    if not torch.is_tensor(x) or x.dim() != 4:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x: expected a (N, C, H, W) tensor, got {got}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating dtype, got {x.dtype}")
    N, C, H, W = x.shape
    if H < 2 or W < 2:
        raise ValueError(f"x: 2x2 pooling needs H, W >= 2, got {H}x{W}")
    for name, t in (("weight", w), ("bias", b)):
        if not torch.is_tensor(t) or tuple(t.shape) != (C,):
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"{name}: expected shape ({C},) for x with C = {C}, got {got}")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(
                f"{name}: expected dtype {x.dtype} on {x.device} (as x), got {t.dtype} on "
                f"{t.device}"
            )


def norm_block(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = EPS,
    backend: str | None = None,
) -> torch.Tensor:
    """Fused ``avg_pool2d(relu(group_norm(x, C, weight, bias, eps)), 2)``.

    Args:
        x: (N, C, H, W) float32 / float64 conv outputs, H, W >= 2 (any strides).
        weight: (C,) GroupNorm scale, dtype and device of ``x``.
        bias: (C,) GroupNorm shift.
        eps: variance epsilon (default 1e-5, ``nn.GroupNorm``'s).
        backend: ``None`` (``MTT_FAST_BACKEND``, else auto) | ``"auto"`` | ``"torch"`` |
            ``"native"`` | ``"triton"``.

    Returns:
        (N, C, H // 2, W // 2), contiguous. Differentiable twice with respect to ``x``,
        ``weight`` and ``bias`` (the backward is differentiable; the double backward is
        not).

    Raises:
        ValueError: bad shapes / dtypes, or an unknown / unavailable backend (listing the
            available ones).
    """
    _check(x, weight, bias)
    impl = backends.dispatch("norm_block", backend, x)
    return _NormBlock.apply(x, weight, bias, float(eps), impl)
