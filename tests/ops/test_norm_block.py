"""The fused norm block (instance norm -> ReLU -> 2x2 avg pool) against its reference:
every backend, forward / backward / double backward, gradcheck + gradgradcheck, routing,
opcheck of the compiled ops."""

from __future__ import annotations

import os

import pytest
import torch

from mtt_fast import _ext, backends
from mtt_fast.ops import norm_block as nbmod
from mtt_fast.ops.norm_block import norm_block, reference, torch_impl

HAS_NATIVE = _ext.load() and _ext.has_kernel("norm_block_forward", "cpu")
HAS_TRITON_CPU = backends.triton_importable() and backends.triton_interpret()
HAS_CUDA = torch.cuda.is_available()


def _param(backend, device, ok, why):
    return pytest.param(backend, device, marks=pytest.mark.skipif(not ok, reason=why),
                        id=f"{backend}-{device}")


BACKENDS = [
    _param("torch", "cpu", True, ""),
    _param("native", "cpu", HAS_NATIVE, f"compiled extension: {_ext.load_error()}"),
    _param("triton", "cpu", HAS_TRITON_CPU, "needs triton and TRITON_INTERPRET=1"),
    _param("native", "cuda", HAS_CUDA and _ext.has_kernel("norm_block_forward", "cuda"),
           "needs a GPU and the CUDA build"),
    _param("triton", "cuda", HAS_CUDA and backends.triton_importable(), "needs a GPU + triton"),
]
# (N, C, H, W): odd sizes (dropped last row / column), a 2x2 plane, a larger even plane
SHAPES = [(3, 5, 7, 9), (2, 3, 2, 2), (2, 4, 16, 12), (1, 2, 5, 4)]


def _inputs(shape, dtype, device, seed, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = shape
    if noncontig:  # a permuted, sliced view with the same logical shape
        x = torch.randn(N, H, C, W + 3, generator=g, dtype=torch.float64)
        x = x.permute(0, 2, 1, 3)[..., 1 : W + 1]
        assert not x.is_contiguous()
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    w = torch.randn(C, generator=g, dtype=torch.float64)
    b = 0.3 * torch.randn(C, generator=g, dtype=torch.float64)
    gy = torch.randn(N, C, H // 2, W // 2, generator=g, dtype=torch.float64)
    v = [torch.randn(shape, generator=g, dtype=torch.float64),
         torch.randn(C, generator=g, dtype=torch.float64),
         torch.randn(C, generator=g, dtype=torch.float64)]
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(w), cast(b), cast(gy), [cast(t) for t in v]


def _all_orders(fn, x, w, b, gy, v):
    """y, (gx, gw, gb), and the double backward (d<v, grads>/d(x, w, gy))."""
    x = x.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    gy = gy.detach().requires_grad_(True)
    y = fn(x, w, b)
    grads = torch.autograd.grad(y, (x, w, b), gy, create_graph=True)
    s = sum((g * vv).sum() for g, vv in zip(grads, v))
    gg = torch.autograd.grad(s, (x, w, gy))
    return [y.detach()] + [g.detach() for g in grads] + list(gg)


NAMES = ["y", "gx", "gw", "gb", "gg_x", "gg_w", "gg_gy"]


def _compare(backend, device, shape, dtype, seed, noncontig=False):
    x, w, b, gy, v = _inputs(shape, dtype, device, seed, noncontig)
    got = _all_orders(lambda *a: norm_block(*a, backend=backend), x, w, b, gy, v)
    assert backends.last_used["norm_block"] == backend
    exact = _all_orders(reference.norm_block, *(t.double() for t in (x, w, b, gy)),
                        [t.double() for t in v])
    if dtype == torch.float64:
        for name, a, e in zip(NAMES, got, exact):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=name)
        return
    # low precision: bound by a multiple of the reference's own error against float64
    own = _all_orders(reference.norm_block, x, w, b, gy, v)
    for name, a, o, e in zip(NAMES, got, own, exact):
        scale = e.abs().max().item() + 1e-30
        err = (a.double() - e).abs().max().item() / scale
        ref_err = (o.double() - e).abs().max().item() / scale
        assert err <= 8 * ref_err + 1e-6, (name, err, ref_err)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(backend, device, shape, dtype):
    _compare(backend, device, shape, dtype, seed=hash(shape) % 1000)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
def test_non_contiguous(backend, device):
    _compare(backend, device, (2, 3, 7, 6), torch.float64, seed=5, noncontig=True)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
def test_conv_sized_float32(backend, device):
    """A ConvNet-like plane (32x32) in float32, where reductions are long."""
    if backend == "triton" and device == "cpu":
        pytest.skip("the interpreter is slow; the small shapes cover Triton on CPU")
    _compare(backend, device, (2, 8, 32, 32), torch.float32, seed=11)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
def test_gradcheck_gradgradcheck(backend, device):
    # the Triton interpreter is slow: a smaller (odd-sized) shape and fast mode there
    interp = backend == "triton" and device == "cpu"
    x, w, b, _, _ = _inputs((1, 2, 5, 3) if interp else (2, 3, 5, 4), torch.float64, device,
                            seed=3)
    args = tuple(t.detach().requires_grad_(True) for t in (x, w, b))

    def fn(*a):
        return norm_block(*a, backend=backend)

    assert torch.autograd.gradcheck(fn, args, fast_mode=interp)
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=interp)


def test_reference_is_the_plain_modules():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 9, 8, generator=g)
    gn = torch.nn.GroupNorm(6, 6)
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    plain = torch.nn.Sequential(gn, torch.nn.ReLU(), torch.nn.AvgPool2d(2, 2))
    torch.testing.assert_close(reference.norm_block(x, gn.weight, gn.bias), plain(x))
    assert reference.EPS == gn.eps


def test_comparison_can_fail(monkeypatch):
    """Negative control: a launcher with the wrong eps is caught in float64."""
    orig = torch_impl.forward
    monkeypatch.setattr(torch_impl, "forward", lambda x, w, b, eps: orig(x, w, b, 1e-3))
    with pytest.raises(AssertionError):
        _compare("torch", "cpu", (2, 3, 4, 4), torch.float64, seed=0)


def test_bias_has_no_second_order_gradient():
    x, w, b, gy, v = _inputs((2, 3, 6, 6), torch.float64, "cpu", seed=1)
    b = b.requires_grad_(True)
    x = x.requires_grad_(True)
    y = norm_block(x, w, b, backend="torch")
    (gx,) = torch.autograd.grad(y, (x,), gy, create_graph=True)
    (gb,) = torch.autograd.grad((gx * v[0]).sum(), (b,), allow_unused=True)
    assert gb is None or gb.abs().max() == 0


# ---------------------------------------------------------------- routing and validation

def test_routing_auto_env_and_explicit(monkeypatch):
    x, w, b, _, _ = _inputs((1, 2, 4, 4), torch.float32, "cpu", seed=0)
    monkeypatch.delenv("MTT_FAST_BACKEND", raising=False)
    norm_block(x, w, b)
    assert backends.last_used["norm_block"] == ("native" if HAS_NATIVE else "torch")
    monkeypatch.setenv("MTT_FAST_BACKEND", "torch")
    norm_block(x, w, b)
    assert backends.last_used["norm_block"] == "torch"
    if HAS_NATIVE:
        norm_block(x, w, b, backend="native")  # the argument beats the environment
        assert backends.last_used["norm_block"] == "native"


def test_routing_runs_the_chosen_launchers(monkeypatch):
    calls = []
    for name in ("forward", "backward", "double_backward"):
        orig = getattr(torch_impl, name)
        monkeypatch.setattr(torch_impl, name,
                            lambda *a, _o=orig, _n=name: calls.append(_n) or _o(*a))
    x, w, b, gy, v = _inputs((1, 2, 4, 4), torch.float64, "cpu", seed=0)
    _all_orders(lambda *a: norm_block(*a, backend="torch"), x, w, b, gy, v)
    assert calls == ["forward", "backward", "double_backward"]


def test_missing_backend_is_an_error(monkeypatch):
    x, w, b, _, _ = _inputs((1, 2, 4, 4), torch.float32, "cpu", seed=0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="available: "):
        norm_block(x, w, b, backend="triton")
    with pytest.raises(ValueError, match="unknown backend"):
        norm_block(x, w, b, backend="cudnn")


@pytest.mark.parametrize(
    ("shape", "wshape", "match"),
    [((2, 3, 4), (3,), "N, C, H, W"), ((2, 3, 1, 4), (3,), "H, W >= 2"),
     ((2, 3, 4, 4), (4,), "weight: expected shape")],
)
def test_validation(shape, wshape, match):
    with pytest.raises(ValueError, match=match):
        norm_block(torch.randn(shape), torch.randn(wshape), torch.randn(wshape))


def test_dtype_mismatch():
    with pytest.raises(ValueError, match="bias: expected dtype"):
        norm_block(torch.randn(1, 2, 4, 4), torch.randn(2), torch.randn(2, dtype=torch.float64))


@pytest.mark.skipif(not HAS_NATIVE, reason="compiled extension not built")
def test_opcheck_native_ops():
    from mtt_fast.ops.norm_block import native  # noqa: F401  (registers the fakes)

    x, w, b, gy, v = _inputs((2, 3, 5, 6), torch.float32, "cpu", seed=4)
    ops = torch.ops.mtt_fast
    y, mean, rstd = ops.norm_block_forward(x, w, b, 1e-5)
    torch.library.opcheck(ops.norm_block_forward, (x, w, b, 1e-5))
    torch.library.opcheck(ops.norm_block_backward, (gy, x, w, b, mean, rstd))
    torch.library.opcheck(ops.norm_block_double_backward, (v[0], v[1], v[2], gy, x, w, b, mean, rstd))
    torch.library.opcheck(ops.norm_block_double_backward, (None, v[1], None, gy, x, w, b, mean, rstd))


@pytest.mark.skipif(not HAS_NATIVE, reason="compiled extension not built")
def test_native_undefined_upstream_is_zero():
    from mtt_fast.ops.norm_block import native

    x, w, b, gy, v = _inputs((2, 3, 5, 6), torch.float64, "cpu", seed=6)
    _, mean, rstd = native.forward(x, w, b, 1e-5)
    z = [torch.zeros_like(t) for t in v]
    for mask in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0)]:
        args = [t if m else None for t, m in zip(v, mask)]
        full = [t if m else zz for t, m, zz in zip(v, mask, z)]
        a = native.double_backward(*args, gy, x, w, b, mean, rstd)
        e = torch_impl.double_backward(*full, gy, x, w, b, mean, rstd)
        for u, t in zip(a, e):
            torch.testing.assert_close(u, t, rtol=1e-10, atol=1e-12)


def test_module_exports():
    assert nbmod.EPS == 1e-5 and callable(nbmod.norm_block)
    assert "norm_block" in backends.report()
    assert os.environ.get("TRITON_INTERPRET") in (None, "0", "1")


@pytest.mark.skipif(not HAS_NATIVE, reason="compiled extension not built")
@pytest.mark.parametrize("isa", ["generic", "best"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_native_cpu_instruction_sets(monkeypatch, isa, dtype):
    """The baseline and the AVX2 builds of the CPU kernels (MTT_FAST_CPU_ISA) both match."""
    if isa == "generic":
        monkeypatch.setenv("MTT_FAST_CPU_ISA", "generic")
    else:
        monkeypatch.delenv("MTT_FAST_CPU_ISA", raising=False)
    _compare("native", "cpu", (3, 5, 33, 19), dtype, seed=21)
