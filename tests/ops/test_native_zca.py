"""Compiled ZCA apply (torch.ops.mtt_fast.zca_apply) against the reference."""

from __future__ import annotations

import pytest
import torch

from mtt_fast import _ext
from mtt_fast.ops.zca import native
from mtt_fast.ops.zca import reference as ref

pytestmark = pytest.mark.skipif(
    not _ext.load(), reason=f"compiled extension not built: {_ext.load_error()}"
)
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not (torch.cuda.is_available() and _ext.has_kernel("zca_apply", "cuda")),
            reason="needs a CUDA GPU and the extension built with CUDA",
        ),
    ),
]


def _fitted(D: int, g: torch.Generator):
    a = torch.randn(D, D, generator=g) / D**0.5
    return torch.randn(D, generator=g) * 0.1, a @ a.t()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_parity(dtype, device):
    g = torch.Generator().manual_seed(0)
    shape = (7, 3, 5, 3)
    mean, w = _fitted(45, g)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    else:
        x = torch.rand(shape, generator=g, dtype=dtype)
    x, mean, w = x.to(device), mean.to(device), w.to(device)
    for scale in (None, 0.5):
        got = native.zca_apply(x, mean, w, scale)
        assert got.dtype == torch.float32 and got.shape == shape
        torch.testing.assert_close(got, ref.zca_apply(x, mean, w, scale), rtol=1e-5, atol=1e-5)
    # non-contiguous input
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xt.is_contiguous()
    torch.testing.assert_close(native.zca_apply(xt, mean, w), ref.zca_apply(xt, mean, w))


def test_backward_matches_reference():
    g = torch.Generator().manual_seed(1)
    mean, w = _fitted(12, g)
    x = torch.rand(4, 3, 2, 2, generator=g, requires_grad=True)
    xr = x.detach().clone().requires_grad_(True)
    up = torch.randn(4, 3, 2, 2, generator=g)
    native.zca_apply(x, mean, w, 0.7).backward(up)
    ref.zca_apply(xr, mean, w, 0.7).backward(up)
    torch.testing.assert_close(x.grad, xr.grad)


def test_opcheck_and_errors():
    g = torch.Generator().manual_seed(2)
    mean, w = _fitted(12, g)
    x = torch.rand(4, 3, 2, 2, generator=g)
    torch.library.opcheck(torch.ops.mtt_fast.zca_apply.default, (x, mean, w, 1.0))
    with pytest.raises(RuntimeError, match=r"matrix: expected shape \[12, 12\], got \[12, 11\]"):
        torch.ops.mtt_fast.zca_apply(x, mean, w[:, :11], 1.0)
