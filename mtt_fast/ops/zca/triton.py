"""Launcher of the ``triton`` backend of ``zca_apply``: ``((x * scale).flatten(1) - mean)
@ matrix`` in one fused kernel.

Each program loads uint8 / float16 / bfloat16 / float32 image tiles, scales and centres
them in registers, multiplies them with tiles of the whitening matrix (``tl.dot``,
float32 accumulation) and stores float32: the images are read once from memory (no
float32 copy, no centred copy) and the output written once.

A plain function on tensors, no autograd: :func:`mtt_fast.ops.zca.zca_apply` validates the
arguments, wraps it in its autograd Function and calls it with contiguous images and
float32 ``mean`` / ``matrix`` on the images' device.

Precision: ``input_precision="ieee"`` (default) is true float32 products, matching the
reference to float32 round-off. On a GPU ``"tf32x3"`` (near-float32 accuracy on tensor
cores) or ``"tf32"`` (about 1e-3 relative error) are faster; the interpreter ignores it.

This module imports without triton; calling it then raises ``RuntimeError``. On CPU
tensors it runs only under the Triton interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import contextlib
import math

import torch

from mtt_fast.ops._triton import IMPORT_ERROR as _IMPORT_ERROR
from mtt_fast.ops._triton import jit as _jit
from mtt_fast.ops._triton import tl, triton  # noqa: F401

__all__ = ["zca_apply", "available"]

_PRECISIONS = ("ieee", "tf32", "tf32x3")


@_jit
def _zca_apply_kernel(
    x_ptr, mean_ptr, w_ptr, out_ptr, N, D, scale, scale_lo,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, PRECISION: tl.constexpr,
):
    # out[N, D] = (x[N, D] * scale - mean[D]) @ w[D, D]; grouped tile order so that a
    # group of row tiles reuses the same matrix column tiles from L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    num_n = tl.cdiv(D, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = rm < N
    mn = rn < D
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < D
        a = tl.load(x_ptr + rm[:, None] * D + rk[None, :], mask=mm[:, None] & mk[None, :],
                    other=0).to(tl.float32)
        mu = tl.load(mean_ptr + rk, mask=mk, other=0.0)
        # padded k columns are 0 * scale - 0 = 0, and their matrix rows load as 0
        # scale = hi + lo, hi with 16 significant bits: a * hi is exact for uint8 pixels, so
        # this is x / 255 correctly rounded (fl(1/255) alone biases every pixel alike)
        a = (a * scale + a * scale_lo) - mu[None, :]
        w = tl.load(w_ptr + rk[:, None] * D + rn[None, :], mask=mk[:, None] & mn[None, :],
                    other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    tl.store(out_ptr + rm[:, None] * D + rn[None, :], acc, mask=mm[:, None] & mn[None, :])


def available() -> bool:
    """Whether triton imported (the kernel can still need a GPU or TRITON_INTERPRET=1)."""
    return _IMPORT_ERROR is None


def _config(device_type: str, precision: str) -> dict:
    if device_type != "cuda":  # interpreter: big tiles mean few (slow) Python programs
        return {"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}
    if precision == "ieee":  # FMA path; untuned guess, see the report
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4,
                "num_stages": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 8,
            "num_stages": 3}


def _launch(
    x2: torch.Tensor, mean: torch.Tensor, matrix: torch.Tensor, scale: float, precision: str,
    config: dict | None,
) -> torch.Tensor:
    N, D = x2.shape
    out = torch.empty((N, D), dtype=torch.float32, device=x2.device)
    if out.numel() == 0:
        return out
    cfg = dict(config or _config(x2.device.type, precision))
    grid = (triton.cdiv(N, cfg["BLOCK_M"]) * triton.cdiv(D, cfg["BLOCK_N"]),)
    ctx = torch.cuda.device(x2.device) if x2.is_cuda else contextlib.nullcontext()
    with ctx:
        m, e = math.frexp(scale)
        hi = math.ldexp(round(m * 2**16) / 2**16, e)
        _zca_apply_kernel[grid](x2, mean, matrix, out, N, D, hi, scale - hi, PRECISION=precision,
                                **cfg)
    return out


def zca_apply(
    x: torch.Tensor,
    mean: torch.Tensor,
    matrix: torch.Tensor,
    scale: float,
    *,
    input_precision: str = "ieee",
    config: dict | None = None,
) -> torch.Tensor:
    """Whiten images with the fused kernel.

    Args:
        x: (N, C, H, W) contiguous uint8 / float16 / bfloat16 / float32 images.
        mean: (D,) float32 mean image, D = C*H*W.
        matrix: (D, D) float32 contiguous whitening matrix (row-vector convention).
        scale: multiplies ``x`` first.
        input_precision: ``"ieee"`` (default), ``"tf32x3"`` or ``"tf32"`` for ``tl.dot``.
        config: override of the tile sizes (``BLOCK_M``, ``BLOCK_N``, ``BLOCK_K``,
            ``GROUP_M``, optionally ``num_warps`` / ``num_stages``); for tests and tuning.

    Returns:
        (N, C, H, W) float32 on ``x``'s device.
    """
    if _IMPORT_ERROR is not None:
        raise RuntimeError(
            f"the Triton ZCA backend needs the `triton` package, which failed to import "
            f"({_IMPORT_ERROR}); use backend='torch' or 'native'"
        )
    if input_precision not in _PRECISIONS:
        raise ValueError(
            f"input_precision: expected one of {', '.join(_PRECISIONS)}, got {input_precision!r}"
        )
    if x.device.type == "cpu" and type(_zca_apply_kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            "Triton runs on CPU tensors only through its interpreter; set "
            "TRITON_INTERPRET=1 before triton is imported, or use a CUDA tensor"
        )
    N = x.shape[0]
    x2 = x.reshape(N, -1).contiguous()
    out = _launch(x2, mean.contiguous(), matrix.contiguous(), float(scale), input_precision, config)
    return out.reshape(x.shape)
