"""ZCA ops: the reference against independent numpy float64, the dispatching fit, and the
Triton apply against the reference (interpreter on CPU tensors, CUDA where present)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mtt_fast
from mtt_fast import backends
from mtt_fast.ops import zca
from mtt_fast.ops.zca import reference as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_TRITON_WHY = None
if not backends.triton_importable():
    _TRITON_WHY = "triton is not importable"
elif DEVICE == "cpu" and not backends.triton_interpret():
    _TRITON_WHY = "no GPU and TRITON_INTERPRET is not 1: Triton cannot run on CPU tensors"
needs_triton = pytest.mark.skipif(_TRITON_WHY is not None, reason=str(_TRITON_WHY))


def _numpy_zca(x: np.ndarray, eps: float):
    """kornia's ZCAWhitening formula, independently: numpy float64 and an SVD."""
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    mean = x.mean(0)
    cov = np.cov(x, rowvar=False, ddof=1)
    u, s, _ = np.linalg.svd(cov)
    return mean, (u / np.sqrt(s + eps)) @ u.T, (u * np.sqrt(s + eps)) @ u.T


def _fitted(shape: tuple, n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, *shape, generator=g) * torch.rand(1, *shape, generator=g)
    return zca.zca_fit(imgs, eps=0.1)


# ------------------------------------------------------------------ reference and fit


@pytest.mark.parametrize("n", [50, 7])  # full rank and rank-deficient covariance
def test_fit_matches_numpy(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    imgs = torch.rand(n, 3, 4, 3, generator=g) ** 2
    want = _numpy_zca(imgs.numpy(), 0.1)
    for got in (ref.zca_fit(imgs, eps=0.1), zca.zca_fit(imgs, eps=0.1)):
        for a, b in zip(got, want):
            assert a.dtype == torch.float32
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5)
    mean, w, winv = zca.zca_fit(imgs)
    torch.testing.assert_close(w @ winv, torch.eye(36), rtol=0, atol=1e-4)


def test_fit_uint8_scales_and_chunks(monkeypatch) -> None:
    g = torch.Generator().manual_seed(1)
    x8 = torch.randint(0, 256, (23, 2, 3, 5), generator=g, dtype=torch.uint8)
    want = _numpy_zca(x8.numpy() / 255.0, 0.1)
    monkeypatch.setattr(zca, "_FIT_CHUNK", 5)  # several covariance chunks, a ragged last one
    for a, b in zip(zca.zca_fit(x8), want):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 images"):
        zca.zca_fit(x8[:1])


def test_reference_apply_formula() -> None:
    mean, w, winv = _fitted((2, 3, 3))
    x = torch.rand(5, 2, 3, 3)
    out = ref.zca_apply(x, mean, w)
    assert out.shape == x.shape and out.dtype == torch.float32
    want = (x.double().flatten(1) - mean.double()) @ w.double()
    torch.testing.assert_close(out.double(), want.view(x.shape), rtol=1e-5, atol=1e-5)
    back = ref.zca_apply(out, -mean @ w, winv)  # inverse: out @ winv + mean
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-4)
    x8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(ref.zca_apply(x8, mean, w), ref.zca_apply(x8.float() / 255, mean, w))
    torch.testing.assert_close(
        ref.zca_apply(x8, mean, w, scale=0.5), ref.zca_apply(x8.float() * 0.5, mean, w)
    )


def test_shape_errors_name_expected_and_got() -> None:
    mean, w, _ = _fitted((2, 3, 3))
    x = torch.rand(4, 3, 3, 3)  # D = 27, fitted D = 18
    with pytest.raises(ValueError, match=r"\(27,\).*got \(18,\)"):
        zca.zca_apply(x, mean, w, backend="torch")
    with pytest.raises(ValueError, match=r"\(18, 18\).*got \(18, 17\)"):
        zca.zca_apply(torch.rand(4, 2, 3, 3), mean, w[:, :17], backend="torch")
    with pytest.raises(ValueError, match="uint8 or float"):
        zca.zca_apply(torch.zeros(4, 2, 3, 3, dtype=torch.int32), mean, w, backend="torch")


def test_routing_and_unknown_backend() -> None:
    mean, w, _ = _fitted((1, 4, 4))
    x = torch.rand(3, 1, 4, 4, device=DEVICE)
    backends.last_used.pop("zca", None)
    out = zca.zca_apply(x, mean, w, backend="torch")
    assert backends.last_used["zca"] == "torch"
    torch.testing.assert_close(out, ref.zca_apply(x, mean, w))
    with pytest.raises(ValueError, match="choose one of auto, torch, native, triton"):
        zca.zca_apply(x, mean, w, backend="warp-drive")
    if "native" not in backends.available("zca", DEVICE):
        with pytest.raises(ValueError, match=r"available: .*torch"):
            zca.zca_apply(x, mean, w, backend="native")


# ------------------------------------------------------------------ Triton apply

ZCA_SHAPES = [(5, 3, 7, 5), (9, 1, 28, 28), (3, 3, 11, 13)]  # D = 105, 784, 429


def _tol(ref_out: torch.Tensor) -> dict:
    # float32 accumulation over D products; tf32 never used (input_precision="ieee")
    return {"rtol": 1e-5, "atol": 2e-5 * max(1.0, ref_out.abs().max().item())}


@needs_triton
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("shape", ZCA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_apply_matches_reference(shape: tuple, dtype: torch.dtype) -> None:
    from mtt_fast.ops.zca import triton as tri

    mean, w, _ = _fitted(shape[1:], seed=shape[2])
    g = torch.Generator().manual_seed(shape[3])
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    if dtype != torch.uint8:
        x = x.to(dtype) / 255
    x, mean, w = x.to(DEVICE), mean.to(DEVICE), w.to(DEVICE)
    want = ref.zca_apply(x, mean, w)
    got = tri.zca_apply(x, mean, w)
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got, want, **_tol(want))


@needs_triton
def test_triton_apply_small_tiles() -> None:
    """Tiles smaller than the problem in every dimension: row / column / k masking, several
    k steps, and a ragged last group of row tiles (3 row tiles, GROUP_M = 2)."""
    from mtt_fast.ops.zca import triton as tri

    mean, w, _ = _fitted((3, 7, 5))
    x = torch.randint(0, 256, (40, 3, 7, 5), dtype=torch.uint8).to(DEVICE)
    mean, w = mean.to(DEVICE), w.to(DEVICE)
    want = ref.zca_apply(x, mean, w)
    small = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}
    torch.testing.assert_close(tri.zca_apply(x, mean, w, config=small), want, **_tol(want))


@needs_triton
def test_triton_apply_layouts_dtypes_and_grad() -> None:
    from mtt_fast.ops.zca import triton as tri

    mean, w, _ = _fitted((3, 5, 6))
    base = torch.rand(4, 3, 6, 5, device=DEVICE)
    x = base.transpose(2, 3)  # (4, 3, 5, 6) non-contiguous
    want = ref.zca_apply(x, mean.to(DEVICE), w.to(DEVICE))
    md, wd = mean.to(DEVICE), w.to(DEVICE)
    for variant in (x, x.contiguous(memory_format=torch.channels_last), x.double(), x.half()):
        exp = ref.zca_apply(variant, md, wd)
        torch.testing.assert_close(tri.zca_apply(variant, md, wd), exp, **_tol(want))
    # gradient in x (the fitted mean / matrix are constants)
    xa = x.detach().clone().requires_grad_(True)
    xb = x.detach().clone().requires_grad_(True)
    grad = torch.randn_like(want)
    ref.zca_apply(xa, md, wd).backward(grad)
    tri.zca_apply(xb, md, wd, scale=0.5).backward(grad)
    torch.testing.assert_close(xb.grad, xa.grad * 0.5, rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError, match="mean / matrix"):
        tri.zca_apply(x, md, wd.clone().requires_grad_(True))


@needs_triton
def test_triton_routing() -> None:
    mean, w, _ = _fitted((2, 5, 5))
    x = torch.randint(0, 256, (6, 2, 5, 5), dtype=torch.uint8, device=DEVICE)
    backends.last_used.pop("zca", None)
    got = mtt_fast.ops.zca.zca_apply(x, mean.to(DEVICE), w.to(DEVICE), backend="triton")
    assert backends.last_used["zca"] == "triton"
    want = ref.zca_apply(x, mean.to(DEVICE), w.to(DEVICE))
    torch.testing.assert_close(got, want, **_tol(want))


def test_triton_module_imports_without_triton(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    path = Path(mtt_fast.__file__).parent / "ops" / "zca" / "triton.py"
    spec = importlib.util.spec_from_file_location("_no_triton_zca", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert not mod.available()
    mean, w, _ = _fitted((1, 2, 2))
    with pytest.raises(RuntimeError, match="triton"):
        mod.zca_apply(torch.rand(2, 1, 2, 2), mean, w)
