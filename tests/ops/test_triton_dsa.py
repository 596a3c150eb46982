"""Triton DSA kernels against the reference (the spec), forward and image gradient.

On a machine without a GPU the kernels run on CPU tensors through the Triton interpreter
(``TRITON_INTERPRET=1``, set by ``tests/conftest.py``); with a GPU the same tests run on
CUDA tensors. Tensors stay small: the interpreter runs every program in Python.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

import mtt_fast
from mtt_fast import backends
from mtt_fast.ops.dsa import reference as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_WHY = None
if not backends.triton_importable():
    _WHY = "triton is not importable: the Triton DSA kernels cannot run"
elif DEVICE == "cpu" and not backends.triton_interpret():
    _WHY = "no GPU and TRITON_INTERPRET is not 1: Triton cannot run on CPU tensors"
needs_triton = pytest.mark.skipif(_WHY is not None, reason=str(_WHY))
if _WHY is None:
    from mtt_fast.ops.dsa import triton as tri

SHAPES = [(5, 3, 31, 29), (3, 1, 28, 28), (2, 3, 64, 64)]
OPS = ("affine", "flip", "crop", "cutout", "color")


def _params(op: str, B: int, H: int, W: int, g: torch.Generator) -> tuple:
    def rand(*s):
        return torch.rand(*s, generator=g)

    if op == "affine":  # rotation + anisotropic scale + a translation (shear-free DSA + more)
        ang = (rand(B) - 0.5) * 0.6
        sx, sy = rand(B) * 0.5 + 0.8, rand(B) * 0.5 + 0.8
        tx, ty = (rand(B) - 0.5) * 0.3, (rand(B) - 0.5) * 0.3
        theta = torch.stack(
            [
                torch.stack([sx * torch.cos(ang), -torch.sin(ang), tx], 1),
                torch.stack([torch.sin(ang), sy * torch.cos(ang), ty], 1),
            ],
            1,
        )
        return (theta,)
    if op == "flip":
        mask = rand(B) < 0.5
        mask[0], mask[-1] = True, False
        return (mask,)
    if op == "crop":
        s = max(1, H // 8)
        return (torch.randint(-s, s + 1, (B, 2), generator=g),)
    if op == "cutout":
        h, w = H // 2 + 1, W // 2  # odd and even sides
        cy = torch.randint(0, H, (B,), generator=g)
        cx = torch.randint(0, W, (B,), generator=g)
        return (torch.stack([cy, cx], 1), (h, w))
    if op == "color":
        return (rand(B) - 0.5, rand(B) * 2, rand(B) + 0.5)
    raise AssertionError(op)


def _to(a, device):
    return tuple(t.to(device) if torch.is_tensor(t) else t for t in a)


def _run(fn, x: torch.Tensor, args: tuple, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x, *args)
    y.backward(grad)
    return y.detach(), x.grad


def _check(op: str, x: torch.Tensor, args: tuple, grad: torch.Tensor) -> None:
    """Compare the Triton op with the reference, forward and x-gradient."""
    y_t, g_t = _run(getattr(tri, op), x, _to(args, x.device), grad)
    assert y_t.dtype == x.dtype and y_t.shape == x.shape
    assert g_t.dtype == x.dtype and g_t.shape == x.shape
    if op in ("flip", "crop", "cutout"):  # exact copies / masks
        y_r, g_r = _run(getattr(ref, op), x, _to(args, x.device), grad)
        torch.testing.assert_close(y_t, y_r, rtol=0, atol=0)
        torch.testing.assert_close(g_t, g_r, rtol=0, atol=0)
        return
    # Rounded ops: bound the kernel's error to the float64 reference by a multiple of the
    # reference's own error at x's precision (bilinear sampling amplifies the round-off
    # of the source coordinate by the image gradient, in the reference as much as here).
    y_r, g_r = _run(getattr(ref, op), x, _to(args, x.device), grad)
    a64 = tuple(t.double() if torch.is_tensor(t) and t.is_floating_point() else t for t in args)
    y_64, g_64 = _run(getattr(ref, op), x.double(), _to(a64, x.device), grad.double())
    for out, own, exact in ((y_t, y_r, y_64), (g_t, g_r, g_64)):
        ref_err = (own.double() - exact).abs().max().item()
        scale = exact.abs().max().item()
        tol = 4 * ref_err + (1e-6 if x.dtype == torch.float32 else 1e-13) * scale
        err = (out.double() - exact).abs().max().item()
        assert err <= tol, f"{op}: error {err:.3e} > {tol:.3e} (reference's own {ref_err:.3e})"
        torch.testing.assert_close(out.float(), own.float(), rtol=1e-5, atol=5e-5 * scale)


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", OPS)
def test_matches_reference_fp32(op: str, shape: tuple) -> None:
    g = torch.Generator().manual_seed(100 * OPS.index(op) + SHAPES.index(shape))
    B, C, H, W = shape
    x = torch.randn(shape, generator=g).to(DEVICE)
    grad = torch.randn(shape, generator=g).to(DEVICE)
    _check(op, x, _params(op, B, H, W, g), grad)


@needs_triton
@pytest.mark.parametrize("op", OPS)
def test_matches_reference_fp64(op: str) -> None:
    g = torch.Generator().manual_seed(7)
    shape = (3, 2, 13, 11)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)
    args = _params(op, 3, 13, 11, g)
    y_t, g_t = _run(getattr(tri, op), x, _to(args, DEVICE), grad)
    a64 = tuple(t.double() if torch.is_tensor(t) and t.is_floating_point() else t for t in args)
    y_r, g_r = _run(getattr(ref, op), x, _to(a64, DEVICE), grad)
    assert y_t.dtype == torch.float64  # computed in float64, not cast down
    torch.testing.assert_close(y_t, y_r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_t, g_r, rtol=1e-12, atol=1e-12)


@needs_triton
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous(op: str) -> None:
    g = torch.Generator().manual_seed(3)
    B, C, H, W = 3, 3, 17, 19
    x = torch.randn(B, C, W, H, generator=g).to(DEVICE).transpose(2, 3)  # (B, C, H, W) view
    assert not x.is_contiguous()
    grad = torch.randn(B, C, W, H, generator=g).to(DEVICE).transpose(2, 3)
    _check(op, x, _params(op, B, H, W, g), grad)
    xl = x.contiguous(memory_format=torch.channels_last)
    _check(op, xl, _params(op, B, H, W, g), grad.contiguous())


@needs_triton
@pytest.mark.filterwarnings("ignore:Since version 1.3.0")
@pytest.mark.parametrize("hw", [(1, 7), (6, 1), (1, 1)])
def test_affine_unit_sized_axes(hw: tuple) -> None:
    """A size-1 axis sits at normalised coordinate 0 (torch's affine_grid convention)."""
    g = torch.Generator().manual_seed(1)
    H, W = hw
    x = torch.randn(2, 2, H, W, generator=g).to(DEVICE)
    grad = torch.randn(2, 2, H, W, generator=g).to(DEVICE)
    _check("affine", x, _params("affine", 2, H, W, g), grad)


@needs_triton
def test_affine_identity_and_far_outside() -> None:
    x = torch.randn(2, 3, 9, 8).to(DEVICE)
    eye = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3).to(DEVICE)
    torch.testing.assert_close(tri.affine(x, eye), x, rtol=1e-5, atol=1e-5)
    far = eye.clone()
    far[:, 0, 2] = 1e9  # every sample far outside: zeros, no overflow in the index cast
    assert torch.equal(tri.affine(x, far), torch.zeros_like(x))


@needs_triton
def test_forward_is_deterministic() -> None:
    """Replaying the same params gives bit-identical output (the checkpointed gradient)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 15, 14, generator=g).to(DEVICE)
    for op in OPS:
        args = _to(_params(op, 4, 15, 14, g), DEVICE)
        assert torch.equal(getattr(tri, op)(x, *args), getattr(tri, op)(x, *args)), op


@needs_triton
def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(11)
    for op in OPS:
        x = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64).to(DEVICE)
        args = _params(op, 2, 5, 4, g)
        args = tuple(
            t.double().to(DEVICE) if torch.is_tensor(t) and t.is_floating_point()
            else (t.to(DEVICE) if torch.is_tensor(t) else t)
            for t in args
        )
        x.requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda x, op=op, args=args: getattr(tri, op)(x, *args), (x,), fast_mode=True
        ), op


@needs_triton
def test_backward_is_first_order_only() -> None:
    x = torch.randn(2, 3, 6, 5, device=DEVICE, requires_grad=True)
    y = tri.color(x, *_to(_params("color", 2, 6, 5, torch.Generator()), DEVICE))
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate"):
        gx.sum().backward()


@needs_triton
def test_parameter_errors() -> None:
    x = torch.randn(2, 3, 6, 5, device=DEVICE)
    with pytest.raises(ValueError, match=r"theta must have shape \(2, 2, 3\)"):
        tri.affine(x, torch.zeros(3, 2, 3, device=DEVICE))
    with pytest.raises(ValueError, match=r"shift must have shape \(2, 2\)"):
        tri.crop(x, torch.zeros(2, device=DEVICE, dtype=torch.int64))
    with pytest.raises(ValueError, match="B, C, H, W"):
        tri.flip(x[0], torch.ones(2, dtype=torch.bool, device=DEVICE))
    theta = torch.zeros(2, 2, 3, device=DEVICE, requires_grad=True)
    with pytest.raises(NotImplementedError, match="theta"):
        tri.affine(x, theta)


@needs_triton
def test_routing_through_augment_apply() -> None:
    """``augment.apply(..., backend="triton")`` runs the Triton kernels and matches."""
    x = torch.randn(4, 3, 16, 15, device=DEVICE)
    gen = torch.Generator().manual_seed(0)
    params = mtt_fast.augment.sample(4, generator=gen, mode="M", device=DEVICE)
    assert set(params.names) == set(OPS)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    backends.last_used.pop("dsa", None)
    out_t = mtt_fast.augment.apply(xa, params, backend="triton")
    assert backends.last_used["dsa"] == "triton"
    out_r = mtt_fast.augment.apply(xb, params, backend="torch")
    assert backends.last_used["dsa"] == "torch"
    torch.testing.assert_close(out_t, out_r, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(out_t)
    out_t.backward(grad)
    out_r.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)


@needs_triton
def test_unknown_backend_lists_available() -> None:
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    params = mtt_fast.augment.sample(2, "flip", generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="choose one of auto, torch, native, triton"):
        mtt_fast.augment.apply(x, params.to(DEVICE), backend="warp-drive")
    if "native" not in backends.available("dsa", DEVICE):
        with pytest.raises(ValueError, match=r"available: .*torch"):
            mtt_fast.augment.apply(x, params.to(DEVICE), backend="native")


def _load_without_triton(monkeypatch, rel: str):
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    path = Path(mtt_fast.__file__).parent / rel
    spec = importlib.util.spec_from_file_location(f"_no_triton_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_module_imports_without_triton(monkeypatch) -> None:
    mod = _load_without_triton(monkeypatch, "ops/dsa/triton.py")
    assert not mod.available()
    with pytest.raises(RuntimeError, match="triton"):
        mod.flip(torch.zeros(1, 1, 2, 2), torch.ones(1, dtype=torch.bool))


@needs_triton
def test_angles_sanity() -> None:
    """A 90-degree rotation of a square image is an exact pixel permutation."""
    x = torch.randn(1, 2, 7, 7, device=DEVICE)
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]], device=DEVICE)
    torch.testing.assert_close(tri.affine(x, theta), ref.affine(x, theta), rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_inputs(dtype: torch.dtype) -> None:
    """Half inputs are computed in float32: within two output ulps of the float32 reference."""
    g = torch.Generator().manual_seed(13)
    B, C, H, W = 3, 3, 9, 7
    x = torch.randn(B, C, H, W, generator=g).to(dtype).to(DEVICE)
    grad = torch.randn(B, C, H, W, generator=g).to(dtype).to(DEVICE)
    eps = torch.finfo(dtype).eps
    for op in OPS:
        args = _to(_params(op, B, H, W, g), DEVICE)
        y_t, g_t = _run(getattr(tri, op), x, args, grad)
        y_r, g_r = _run(getattr(ref, op), x.float(), args, grad.float())
        assert y_t.dtype == dtype and g_t.dtype == dtype
        for out, want in ((y_t, y_r), (g_t, g_r)):
            tol = 2 * eps * want.abs().max().item()
            torch.testing.assert_close(out.float(), want, rtol=0, atol=tol, msg=op)
