"""Compiled DSA ops (torch.ops.mtt_fast.*) against the reference: forward, backward,
gradcheck, opcheck, and routing through mtt_fast.augment.apply."""

from __future__ import annotations

import math

import pytest
import torch

import mtt_fast
from mtt_fast import _ext, backends
from mtt_fast.ops.dsa import native
from mtt_fast.ops.dsa import reference as ref

HAS_EXT = _ext.load()
needs_ext = pytest.mark.skipif(
    not HAS_EXT, reason=f"compiled extension not built: {_ext.load_error()}"
)
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not (torch.cuda.is_available() and _ext.has_kernel("dsa_affine", "cuda")),
            reason="needs a CUDA GPU and the extension built with CUDA",
        ),
    ),
]
SHAPES = [(5, 3, 31, 29), (4, 1, 28, 28), (2, 3, 64, 64)]
# float32 affine: a coordinate rounding of 1 ulp moves a sample by up to ~|dx/dpixel| * 4e-6
TOL = {torch.float32: dict(rtol=1e-5, atol=5e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}
OPS = ("affine_scale", "affine_rotate", "flip", "crop", "cutout", "color")


def make_args(op: str, B: int, H: int, W: int, g: torch.Generator, device) -> tuple:
    """Fresh random op arguments (after the images), as augment.sample would give them."""

    def u(*s):
        return torch.rand(*s, generator=g)

    if op == "affine_scale":
        s = u(B, 2) * (1.2 - 1 / 1.2) + 1 / 1.2
        z = torch.zeros(B)
        theta = torch.stack([torch.stack([s[:, 0], z, z], 1), torch.stack([z, s[:, 1], z], 1)], 1)
        args = (theta,)
    elif op == "affine_rotate":
        a = (u(B) - 0.5) * 2 * 15 / 180 * math.pi
        c, s, z = a.cos(), a.sin(), torch.zeros(B)
        args = (torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1),)
    elif op == "flip":
        args = (u(B) < 0.5,)
    elif op == "crop":
        sy, sx = int(H * 0.125 + 0.5), int(W * 0.125 + 0.5)
        dy = torch.randint(-sy, sy + 1, (B,), generator=g)
        dx = torch.randint(-sx, sx + 1, (B,), generator=g)
        args = (torch.stack([dy, dx], 1),)
    elif op == "cutout":
        h, w = int(H * 0.5 + 0.5), int(W * 0.5 + 0.5)
        cy = torch.randint(0, H + (1 - h % 2), (B,), generator=g)
        cx = torch.randint(0, W + (1 - w % 2), (B,), generator=g)
        args = (torch.stack([cy, cx], 1), (h, w))
    else:
        args = (u(B) - 0.5, u(B) * 2, u(B) + 0.5)
    return tuple(a.to(device) if torch.is_tensor(a) else a for a in args)


def fn_name(op: str) -> str:
    return "affine" if op.startswith("affine") else op


def compare(op, x, args, dtype):
    """Forward and x-gradient of native vs reference for one input."""
    g_up = torch.randn(x.shape, dtype=dtype, device=x.device)
    xr = x.detach().clone().requires_grad_(True)
    xn = x.detach().clone().requires_grad_(True)
    out_r = getattr(ref, fn_name(op))(xr, *args)
    out_n = getattr(native, fn_name(op))(xn, *args)
    torch.testing.assert_close(out_n, out_r, **TOL[dtype])
    out_r.backward(g_up)
    out_n.backward(g_up)
    torch.testing.assert_close(xn.grad, xr.grad, **TOL[dtype])


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", OPS)
def test_parity(op, shape, dtype, device):
    B, C, H, W = shape
    g = torch.Generator().manual_seed(hash((op, shape)) % 2**31)
    x = torch.randn(shape, generator=g, dtype=dtype).to(device)
    compare(op, x, make_args(op, B, H, W, g, device), dtype)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous(op, device):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 21, 3, 19, generator=g, dtype=torch.float64).to(device)
    x = base.permute(0, 2, 1, 3)[::2, :, 1:, :]  # (3, 3, 20, 19), non-contiguous view
    assert not x.is_contiguous()
    B, _, H, W = x.shape
    compare(op, x, make_args(op, B, H, W, g, device), torch.float64)


@needs_ext
def test_float32_theta_with_float64_images():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 9, 11, generator=g, dtype=torch.float64)
    (theta,) = make_args("affine_rotate", 3, 9, 11, g, "cpu")
    torch.testing.assert_close(native.affine(x, theta), ref.affine(x, theta))


@needs_ext
@pytest.mark.parametrize("op", OPS)
def test_gradcheck(op):
    g = torch.Generator().manual_seed(3)
    B, C, H, W = 2, 2, 7, 6
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    args = make_args(op, B, H, W, g, "cpu")
    if op.startswith("affine"):
        args = (args[0].double(),)
    f = getattr(native, fn_name(op))
    assert torch.autograd.gradcheck(lambda t: f(t, *args), (x,), eps=1e-6, atol=1e-7)


def _op_cases():
    g = torch.Generator().manual_seed(4)
    B, C, H, W = 3, 2, 9, 7
    x = torch.randn(B, C, H, W, generator=g)
    (theta,) = make_args("affine_rotate", B, H, W, g, "cpu")
    (shift,) = make_args("crop", B, H, W, g, "cpu")
    center, (h, w) = make_args("cutout", B, H, W, g, "cpu")
    b, s, c = make_args("color", B, H, W, g, "cpu")
    return {
        "dsa_affine": (x, theta),
        "dsa_affine_backward": (x, theta),
        "dsa_flip": (x, torch.tensor([True, False, True])),
        "dsa_crop": (x, shift),
        "dsa_cutout": (x, center, h, w),
        "dsa_color": (x, b, s, c),
        "dsa_color_backward": (x, s, c),
    }


@needs_ext
@pytest.mark.parametrize(
    "name",
    [
        "dsa_affine",
        "dsa_affine_backward",
        "dsa_flip",
        "dsa_crop",
        "dsa_cutout",
        "dsa_color",
        "dsa_color_backward",
    ],
)
def test_opcheck(name):
    args = _op_cases()[name]
    torch.library.opcheck(getattr(torch.ops.mtt_fast, name).default, args)


@needs_ext
def test_input_errors_name_the_argument():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match=r"theta: expected shape \[2, 2, 3\], got \[2, 3\]"):
        torch.ops.mtt_fast.dsa_affine(x, torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="shift: expected an integer tensor"):
        torch.ops.mtt_fast.dsa_crop(x, torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="x: expected a .B, C, H, W. tensor"):
        torch.ops.mtt_fast.dsa_flip(x[0], torch.zeros(2, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="x: expected dtype float32 or float64"):
        torch.ops.mtt_fast.dsa_flip(x.half(), torch.zeros(2, dtype=torch.bool))


@needs_ext
@pytest.mark.parametrize("mode", ["S", "M"])
def test_routing_native(mode):
    torch.manual_seed(5)
    x = torch.randn(6, 3, 17, 15, dtype=torch.float64)
    gen = torch.Generator().manual_seed(6)
    for _ in range(4):
        p = mtt_fast.augment.sample(6, generator=gen, mode=mode)
        backends.last_used.pop("dsa", None)
        out = mtt_fast.augment.apply(x, p, backend="native")
        assert backends.last_used["dsa"] == "native"
        torch.testing.assert_close(out, mtt_fast.augment.apply(x, p, backend="torch"))


def test_native_missing_is_an_error(monkeypatch):
    monkeypatch.setattr(_ext, "has_kernel", lambda op, device_type: False)
    x = torch.randn(2, 3, 8, 8)
    p = mtt_fast.augment.sample(2, strategy="flip", generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"backend 'native' is not available") as err:
        mtt_fast.augment.apply(x, p, backend="native")
    listed = str(err.value).rsplit("available: ", 1)[1].split(", ")
    assert "torch" in listed and "native" not in listed


def test_unbuilt_extension_raises_clearly(monkeypatch):
    monkeypatch.setitem(_ext._state, "tried", True)
    monkeypatch.setitem(_ext._state, "ok", False)
    monkeypatch.setitem(_ext._state, "error", "simulated: not built")
    with pytest.raises(RuntimeError, match="native DSA ops are unavailable: simulated"):
        native.flip(torch.randn(1, 1, 2, 2), torch.tensor([True]))
