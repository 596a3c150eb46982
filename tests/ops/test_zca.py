"""ZCA: the one specification (fit, apply, inverse) against an independent numpy float64
implementation, and the ``zca_apply`` op on every backend against it: forward and image
gradient in every dtype a backend declares, odd sizes and non-contiguous layouts; gradcheck
and gradgradcheck in float64; routing; validation; the compiled op's schema (opcheck).

Tolerances come from the reference's own error: a backend's error against the float64
evaluation of the formula must stay within 4x the error of the reference in the same
compute dtype, plus a few float32 ulps of the output's scale.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtt_fast import _ext, backends
from mtt_fast.ops import zca
from mtt_fast.ops.zca import reference as ref

BACKEND_DTYPES = [
    pytest.param(b, d, id=f"{b}-{str(d)[6:]}")
    for b in backends.NAMES
    for d in backends.dtypes("zca", b)
]
# (N, C, H, W) and layout; D = 105, 784, 429, 3072
SHAPES = [
    pytest.param((5, 3, 7, 5), "contiguous", id="5x3x7x5"),
    pytest.param((9, 1, 28, 28), "transposed", id="9x1x28x28-transposed"),
    pytest.param((3, 3, 11, 13), "channels_last", id="3x3x11x13-channels_last"),
    pytest.param((7, 3, 32, 32), "contiguous", id="7x3x32x32", marks=pytest.mark.slow),
]


def _images(shape, layout, dtype, g, device) -> torch.Tensor:
    N, C, H, W = shape
    dims = (N, C, W, H) if layout == "transposed" else shape
    x = torch.randint(0, 256, dims, generator=g, dtype=torch.uint8)
    if dtype != torch.uint8:
        x = (x.double() / 255).to(dtype)
    x = x.to(device)
    if layout == "transposed":
        x = x.transpose(2, 3)
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert (layout == "contiguous") == x.is_contiguous()
    return x


def _run(fn, x, grad):
    if not x.is_floating_point():
        return fn(x), None
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, grad)
    return y.detach(), gx


# ----------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("n", [50, 7])  # full rank and rank-deficient covariance
def test_fit_matches_numpy(n, numpy_zca):
    g = torch.Generator().manual_seed(n)
    imgs = torch.rand(n, 3, 4, 3, generator=g) ** 2
    want = numpy_zca(imgs.numpy(), 0.1)
    got = zca.zca_fit(imgs, eps=0.1)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5)
    mean, w, winv = got
    torch.testing.assert_close(w @ winv, torch.eye(36), rtol=0, atol=1e-4)


def test_fit_uint8_scales_and_chunks(monkeypatch, numpy_zca):
    g = torch.Generator().manual_seed(1)
    x8 = torch.randint(0, 256, (23, 2, 3, 5), generator=g, dtype=torch.uint8)
    want = numpy_zca(x8.numpy() / 255.0, 0.1)
    monkeypatch.setattr(ref, "_FIT_CHUNK", 5)  # several covariance chunks, a ragged last one
    for a, b in zip(zca.zca_fit(x8), want):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5)


def test_fit_errors():
    x = torch.rand(4, 1, 2, 2)
    with pytest.raises(ValueError, match="^images: expected at least 2 images"):
        zca.zca_fit(x[:1])
    with pytest.raises(ValueError, match=r"^images: expected .*got \(4, 4\)"):
        zca.zca_fit(x.reshape(4, 4))
    with pytest.raises(ValueError, match="^images: expected uint8 or float, got torch.int32"):
        zca.zca_fit(x.to(torch.int32))
    with pytest.raises(ValueError, match="^eps: expected >= 0"):
        zca.zca_fit(x, eps=-1)
    with pytest.raises(ValueError, match="^eps: the covariance is singular"):
        zca.zca_fit(x[:3], eps=0)  # 3 images in 4 dimensions: rank 2


def test_apply_and_inverse_formula(zca_state):
    mean, w, winv = zca_state((2, 3, 3))
    x = torch.rand(5, 2, 3, 3)
    out = ref.zca_apply(x, mean, w)
    assert out.shape == x.shape and out.dtype == torch.float32
    want = (x.double().flatten(1) - mean.double()) @ w.double()
    torch.testing.assert_close(out.double(), want.view(x.shape), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref.zca_inverse(out, mean, winv), x, rtol=1e-4, atol=1e-4)
    x8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(ref.zca_apply(x8, mean, w), ref.zca_apply(x8.float() / 255, mean, w))
    torch.testing.assert_close(
        ref.zca_apply(x8, mean, w, scale=0.5), ref.zca_apply(x8.float() * 0.5, mean, w)
    )
    # float64 images are computed in float64
    out64 = ref.zca_apply(x.double(), mean, w)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, want.view(x.shape), rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------- backends


@pytest.mark.parametrize("shape,layout", SHAPES)
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_parity(backend, dtype, shape, layout, device, zca_state, require_backend):
    require_backend("zca", backend, device)
    N, C, H, W = shape
    mean, w, _ = (t.to(device) for t in zca_state((C, H, W), seed=C * H * W))
    g = torch.Generator().manual_seed(N)
    x = _images(shape, layout, dtype, g, device)
    ct = ref.compute_dtype(dtype)
    grad = torch.randn(shape, generator=g, dtype=ct).to(device)
    for scale in (None, 0.5):
        backends.last_used.pop("zca", None)
        y, gx = _run(lambda t, s=scale: zca.zca_apply(t, mean, w, s, backend=backend), x, grad)
        assert backends.last_used["zca"] == backend
        assert y.dtype == ct and y.shape == x.shape
        y_own, g_own = _run(lambda t, s=scale: ref.zca_apply(t, mean, w, s), x, grad)
        s = ref.default_scale(x, scale)
        exact = ((x.double().flatten(1) * s - mean.double()) @ w.double()).view(shape)
        g_exact = None
        if gx is not None:
            assert gx.dtype == dtype
            g_exact = ((grad.double().flatten(1) @ w.double().T) * s).view(shape)
        for what, out, own, ex in (("forward", y, y_own, exact), ("gradient", gx, g_own, g_exact)):
            if out is None:
                continue
            scale_ = ex.abs().max().item()
            own_err = (own.double() - ex).abs().max().item()
            tol = 4 * own_err + 4 * torch.finfo(out.dtype).eps * scale_
            err = (out.double() - ex).abs().max().item()
            assert err <= tol, (
                f"{what} on {backend} {dtype}: error {err:.3e} > {tol:.3e} "
                f"(the reference's own error {own_err:.3e})"
            )


def test_gradcheck_and_double_backward(device, zca_state):
    """float64 (the reference alone takes it): the x-gradient is the Jacobian transpose
    and, computed by a plain matmul, is itself differentiable."""
    mean, w, _ = (t.double().to(device) for t in zca_state((2, 3, 2), n=20))
    x = torch.rand(3, 2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)

    def f(t):
        return zca.zca_apply(t, mean, w, 0.7)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_kernel_backends_give_the_same_gradient(backend, zca_state, require_backend):
    require_backend("zca", backend, "cpu")
    mean, w, _ = zca_state((3, 2, 2), n=20)
    x = torch.rand(4, 3, 2, 2)
    up = torch.randn(4, 3, 2, 2)
    got = _run(lambda t: zca.zca_apply(t, mean, w, 0.7, backend=backend), x, up)[1]
    want = _run(lambda t: ref.zca_apply(t, mean, w, 0.7), x, up)[1]
    torch.testing.assert_close(got, want)


def test_triton_small_tiles(zca_state, require_backend, device):
    """Tiles smaller than the problem in every dimension: row / column / k masking, several
    k steps, and a ragged last group of row tiles (3 row tiles, GROUP_M = 2)."""
    require_backend("zca", "triton", device)
    from mtt_fast.ops.zca import triton as tri

    mean, w, _ = (t.to(device) for t in zca_state((3, 7, 5)))
    x = torch.randint(0, 256, (40, 3, 7, 5), dtype=torch.uint8).to(device)
    want = ref.zca_apply(x, mean, w)
    small = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}
    got = tri.zca_apply(x, mean, w, 1 / 255, config=small)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5 * want.abs().max().item())


# ----------------------------------------------------------------------------- validation


def test_arguments_are_validated_in_one_place(zca_state):
    mean, w, _ = zca_state((2, 3, 3))
    x = torch.rand(4, 3, 3, 3)  # D = 27, fitted D = 18
    cases = [
        (lambda: zca.zca_apply(x, mean, w), r"^mean: expected shape \(27,\) \(D = C\*H\*W of x \(4, 3, 3, 3\)\), got \(18,\)$"),
        (lambda: zca.zca_apply(x[:, :2], mean, w[:, :17]), r"^matrix: expected shape \(18, 18\) .*got \(18, 17\)$"),
        (lambda: zca.zca_apply(x[:, :2].to(torch.int32), mean, w), r"^x: expected uint8 or float, got torch.int32$"),
        (lambda: zca.zca_apply(x[0], mean, w), r"^x: expected a \(N, C, H, W\) tensor, got \(3, 3, 3\)$"),
        (lambda: zca.zca_apply(x[:, :2], mean.long(), w), r"^mean: expected a float tensor, got torch.int64$"),
        (lambda: zca.zca_apply(x[:, :2], mean, w.clone().requires_grad_(True)), r"^matrix: the fitted ZCA state gets no gradient"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()


# ----------------------------------------------------------------------------- routing


def _spy(monkeypatch, calls: list) -> None:
    for name in backends.available("zca", "cpu"):
        mod = backends.launchers("zca", name)
        orig = mod.zca_apply

        def wrapped(*a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(*a, **k)

        monkeypatch.setattr(mod, "zca_apply", wrapped)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_routing_runs_the_backend_asked_for(backend, dtype, monkeypatch, zca_state,
                                            require_backend):
    require_backend("zca", backend, "cpu")
    calls: list = []
    _spy(monkeypatch, calls)
    mean, w, _ = zca_state((2, 5, 5))
    x = torch.randint(0, 256, (6, 2, 5, 5), dtype=torch.uint8).to(dtype)
    zca.zca_apply(x, mean, w, backend=backend)
    assert calls == [backend] and backends.last_used["zca"] == backend


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32, torch.float64])
def test_auto_routes_by_dtype(dtype, monkeypatch, zca_state):
    """CPU auto: the compiled op when built for what it takes; float64 to the reference
    (the kernels compute in float32); never Triton's interpreter."""
    monkeypatch.delenv("MTT_FAST_BACKEND", raising=False)
    calls: list = []
    _spy(monkeypatch, calls)
    mean, w, _ = zca_state((1, 4, 4))
    out = zca.zca_apply(torch.ones(3, 1, 4, 4).to(dtype), mean, w)
    native = "native" in backends.available("zca", "cpu")
    want = "native" if native and dtype != torch.float64 else "torch"
    assert calls == [want] and backends.last_used["zca"] == want
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_explicit_kernel_rejects_float64(zca_state):
    mean, w, _ = zca_state((1, 4, 4))
    for name in ("native", "triton"):
        with pytest.raises(ValueError, match=rf"^backend '{name}' is not available for op 'zca' on "
                           r"cpu float64 tensors .*available: torch$"):
            zca.zca_apply(torch.rand(2, 1, 4, 4, dtype=torch.float64), mean, w, backend=name)


# ----------------------------------------------------------------------------- compiled op


def test_opcheck_and_compiled_errors(zca_state, require_backend):
    require_backend("zca", "native", "cpu")
    import mtt_fast.ops.zca.native  # noqa: F401  (registers the fake kernel)

    mean, w, _ = zca_state((3, 2, 2), n=20)
    x = torch.rand(4, 3, 2, 2)
    torch.library.opcheck(torch.ops.mtt_fast.zca_apply.default, (x, mean, w, 1.0))
    with pytest.raises(RuntimeError, match=r"matrix: expected shape \[12, 12\], got \[12, 11\]"):
        torch.ops.mtt_fast.zca_apply(x, mean, w[:, :11], 1.0)


def test_native_launcher_without_extension_raises_clearly(monkeypatch, zca_state):
    from mtt_fast.ops.zca import native

    monkeypatch.setitem(_ext._state, "tried", True)
    monkeypatch.setitem(_ext._state, "ok", False)
    monkeypatch.setitem(_ext._state, "error", "simulated: not built")
    mean, w, _ = zca_state((1, 2, 2))
    with pytest.raises(RuntimeError, match="native ZCA op is unavailable: simulated"):
        native.zca_apply(torch.rand(2, 1, 2, 2), mean, w, 1.0)


def test_triton_module_imports_without_triton(load_without_triton, zca_state):
    mod = load_without_triton("zca")
    assert not mod.available()
    mean, w, _ = zca_state((1, 2, 2))
    with pytest.raises(RuntimeError, match="triton"):
        mod.zca_apply(torch.rand(2, 1, 2, 2), mean, w, 1.0)
