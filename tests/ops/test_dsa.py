"""The DSA ops on every backend against the reference (the spec): forward and image
gradient on fresh random inputs with odd sizes and non-contiguous layouts, in every dtype a
backend declares; gradcheck and gradgradcheck in float64; routing; validation; the compiled
ops' schemas (opcheck).

Tolerances come from the reference's own error: a backend's error against the float64
reference must stay within 4x the error of the reference run in the same dtype (plus a few
ulps of the output's scale). For float64, whose reference is its own oracle, the
reference's own error is estimated from its float32 error scaled by the ratio of the
epsilons. Integer remaps (flip, crop, cutout) must be bit-identical to the reference.
"""

from __future__ import annotations

import math

import pytest
import torch

import mtt_fast
from mtt_fast import _ext, backends
from mtt_fast.ops import dsa
from mtt_fast.ops.dsa import reference as ref

CASES = ("affine_scale", "affine_rotate", "affine_general", "flip", "crop", "cutout", "color")
EXACT = ("flip", "crop", "cutout")
LAUNCHERS = ("affine", "affine_adjoint", "flip", "crop", "crop_adjoint", "cutout", "color",
             "color_adjoint")
# (backend, dtype) pairs each backend declares: a backend is tested in exactly those
BACKEND_DTYPES = [
    pytest.param(b, d, id=f"{b}-{str(d)[6:]}")
    for b in backends.NAMES
    for d in backends.dtypes("dsa", b)
]
# (B, C, H, W) and layout: odd sizes; a transposed view; channels_last
SHAPES = [
    pytest.param((5, 3, 31, 29), "contiguous", id="5x3x31x29"),
    pytest.param((3, 1, 28, 27), "transposed", id="3x1x28x27-transposed"),
    pytest.param((4, 3, 17, 19), "channels_last", id="4x3x17x19-channels_last"),
    pytest.param((2, 3, 64, 64), "contiguous", id="2x3x64x64", marks=pytest.mark.slow),
]


def fn_name(case: str) -> str:
    return "affine" if case.startswith("affine") else case


def _images(shape, layout, dtype, g, device) -> torch.Tensor:
    B, C, H, W = shape
    if layout == "transposed":
        x = torch.randn(B, C, W, H, generator=g).to(dtype).to(device).transpose(2, 3)
    else:
        x = torch.randn(shape, generator=g).to(dtype).to(device)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    assert (layout == "contiguous") == x.is_contiguous()
    return x


def _on(params, device, float_dtype=None):
    out = []
    for p in params:
        if torch.is_tensor(p):
            if float_dtype is not None and p.is_floating_point():
                p = p.to(float_dtype)
            p = p.to(device)
        out.append(p)
    return tuple(out)


def _run(fn, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, grad)
    return y.detach(), gx


def check_against_reference(case, backend, x, params, grad):
    """Forward and x-gradient of ``dsa.<op>(backend=...)`` against the reference."""
    name = fn_name(case)
    op, spec = getattr(dsa, name), getattr(ref, name)
    backends.last_used.pop("dsa", None)
    y, gx = _run(lambda t: op(t, *params, backend=backend), x, grad)
    assert backends.last_used["dsa"] == backend
    for t in (y, gx):
        assert t.dtype == x.dtype and t.shape == x.shape
    y_own, g_own = _run(lambda t: spec(t, *params), x, grad)
    if backend == "torch" and x.is_contiguous():  # the reference's numbers, unchanged
        assert torch.equal(y, y_own) and torch.equal(gx, g_own)
    if case in EXACT:
        torch.testing.assert_close(y, y_own, rtol=0, atol=0)
        torch.testing.assert_close(gx, g_own, rtol=0, atol=0)
        return
    p64 = _on(params, x.device, torch.float64)
    y64, g64 = _run(lambda t: spec(t, *p64), x.double(), grad.double())
    if x.dtype == torch.float64:  # own error estimated from float32, scaled by eps ratio
        y_own, g_own = _run(lambda t: spec(t, *params), x.float(), grad.float())
    ratio = torch.finfo(x.dtype).eps / torch.finfo(y_own.dtype).eps
    for what, out, own, exact in (("forward", y, y_own, y64), ("gradient", gx, g_own, g64)):
        own_err = (own.double() - exact).abs().max().item() * ratio
        scale = exact.abs().max().item()
        tol = 4 * own_err + 4 * torch.finfo(x.dtype).eps * scale
        err = (out.double() - exact).abs().max().item()
        assert err <= tol, (
            f"{case} {what} on {backend} {x.dtype}: error {err:.3e} > {tol:.3e} "
            f"(the reference's own error {own_err:.3e})"
        )


@pytest.mark.parametrize("shape,layout", SHAPES)
@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_parity(case, backend, dtype, shape, layout, device, dsa_params, require_backend):
    require_backend("dsa", backend, device)
    g = torch.Generator().manual_seed(CASES.index(case) * 1000 + sum(shape))
    B, C, H, W = shape
    x = _images(shape, layout, dtype, g, device)
    grad = torch.randn(shape, generator=g).to(dtype).to(device)
    params = _on(dsa_params(case, B, H, W, g), device)
    check_against_reference(case, backend, x, params, grad)


@pytest.mark.parametrize("backend", backends.NAMES)
@pytest.mark.parametrize("case", CASES)
def test_gradcheck_and_double_backward(case, backend, device, dsa_params, require_backend):
    """float64: the backward is the exact Jacobian transpose, and (claimed in the module
    docstring) is itself differentiable: gradgradcheck."""
    require_backend("dsa", backend, device)
    g = torch.Generator().manual_seed(3)
    B, C, H, W = 2, 2, 7, 6
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(device)
    params = _on(dsa_params(case, B, H, W, g), device, torch.float64)
    op = getattr(dsa, fn_name(case))

    def f(t):
        return op(t, *params, backend=backend)

    x.requires_grad_(True)
    fast = backend == "triton" and device == "cpu"  # the interpreter: one launch per column
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, fast_mode=fast)
    assert torch.autograd.gradgradcheck(f, (x,), eps=1e-6, atol=1e-7, fast_mode=fast)


@pytest.mark.parametrize("backend", backends.NAMES)
def test_meta_gradient_through_a_student_step(backend, device, require_backend):
    """What trajectory matching needs: the gradient, with respect to the images and the
    lr, of a loss on ``theta_1 = theta_0 - lr * dl(theta_0; augment(X))/dtheta``, all six
    DSA groups applied ('M' mode); the backend's result equals plain autograd through the
    reference ops."""
    require_backend("dsa", backend, device)
    g = torch.Generator().manual_seed(8)
    B, C, H, W, K = 4, 3, 9, 8, 5
    X = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(device)
    y = torch.randint(0, K, (B,), generator=g).to(device)
    theta0 = (torch.randn(C * H * W, K, generator=g, dtype=torch.float64) * 0.1).to(device)
    target = torch.randn(C * H * W, K, generator=g, dtype=torch.float64).to(device)
    params = mtt_fast.augment.sample(B, generator=torch.Generator().manual_seed(1), mode="M")
    steps = mtt_fast.augment.resolve(params.to(device), H, W)

    def augment_with(x, how):
        for name, a in steps:
            a = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v)
                 for k, v in a.items()}
            x = getattr(ref, name)(x, **a) if how == "plain" else getattr(dsa, name)(
                x, **a, backend=how)
        return x

    def meta(how):
        Xr = X.clone().requires_grad_(True)
        lr = torch.tensor(0.1, dtype=torch.float64, device=device, requires_grad=True)
        th = theta0.clone().requires_grad_(True)
        logits = augment_with(Xr, how).flatten(1) @ th
        (gth,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), th,
                                     create_graph=True)
        loss = (th - lr * gth - target).pow(2).sum()
        return torch.autograd.grad(loss, (Xr, lr))

    got, want = meta(backend), meta("plain")
    assert backends.last_used["dsa"] == backend
    assert want[0].abs().max() > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.filterwarnings("ignore:Since version 1.3.0")
@pytest.mark.parametrize("hw", [(1, 7), (6, 1), (1, 1)])
@pytest.mark.parametrize("backend", backends.NAMES)
def test_affine_unit_sized_axes(backend, hw, device, dsa_params, require_backend):
    """A size-1 axis sits at normalised coordinate 0 (torch's affine_grid convention)."""
    require_backend("dsa", backend, device)
    g = torch.Generator().manual_seed(1)
    H, W = hw
    x = torch.randn(2, 2, H, W, generator=g).to(device)
    grad = torch.randn(2, 2, H, W, generator=g).to(device)
    params = _on(dsa_params("affine_general", 2, H, W, g), device)
    check_against_reference("affine_general", backend, x, params, grad)


@pytest.mark.parametrize("backend", backends.NAMES)
def test_affine_identity_rotation_and_far_outside(backend, device, require_backend):
    require_backend("dsa", backend, device)
    x = torch.randn(2, 3, 9, 9).to(device)
    eye = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3).to(device)
    torch.testing.assert_close(dsa.affine(x, eye, backend=backend), x, rtol=1e-5, atol=1e-5)
    far = eye.clone()
    far[:, 0, 2] = 1e9  # every sample far outside: zeros, no overflow in an index cast
    assert torch.equal(dsa.affine(x, far, backend=backend), torch.zeros_like(x))
    # a 90-degree rotation of a square image is a pixel permutation: out[i, j] = x[j, W-1-i]
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0]]).expand(2, 2, 3).to(device)
    want = x.transpose(2, 3).flip(2)
    torch.testing.assert_close(dsa.affine(x, rot, backend=backend), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", backends.NAMES)
def test_forward_is_deterministic(backend, device, dsa_params, require_backend):
    """Replaying the same params gives bit-identical output (the checkpointed gradient)."""
    require_backend("dsa", backend, device)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 15, 14, generator=g).to(device)
    for case in CASES:
        params = _on(dsa_params(case, 4, 15, 14, g), device)
        op = getattr(dsa, fn_name(case))
        assert torch.equal(op(x, *params, backend=backend), op(x, *params, backend=backend)), case


# ----------------------------------------------------------------------------- validation


def test_arguments_are_validated_in_one_place():
    """Every backend sees the same checks: one-line ValueErrors naming argument and shape
    or dtype."""
    x = torch.randn(2, 3, 6, 5)
    cases = [
        (lambda: dsa.affine(x, torch.zeros(3, 2, 3)), r"^theta: expected shape \(2, 2, 3\), got \(3, 2, 3\)$"),
        (lambda: dsa.affine(x, torch.zeros(2, 2, 3, dtype=torch.int64)), r"^theta: expected a float tensor, got torch.int64$"),
        (lambda: dsa.crop(x, torch.zeros(2, dtype=torch.int64)), r"^shift: expected shape \(2, 2\), got \(2,\)$"),
        (lambda: dsa.crop(x, torch.zeros(2, 2)), r"^shift: expected an integer tensor, got torch.float32$"),
        (lambda: dsa.flip(x[0], torch.ones(2, dtype=torch.bool)), r"^x: expected a \(B, C, H, W\) tensor, got \(3, 6, 5\)$"),
        (lambda: dsa.flip(x.long(), torch.ones(2, dtype=torch.bool)), r"^x: expected a float16/bfloat16/float32/float64 tensor, got torch.int64$"),
        (lambda: dsa.flip(x, torch.ones(3, dtype=torch.bool)), r"^mask: expected shape \(2,\), got \(3,\)$"),
        (lambda: dsa.cutout(x, torch.zeros(2, 2, dtype=torch.int64), (-1, 2)), r"^size: expected \(h, w\) >= 0, got \(-1, 2\)$"),
        (lambda: dsa.color(x, torch.zeros(2), torch.ones(1), torch.ones(2)), r"^saturation: expected shape \(2,\), got \(1,\)$"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()


def test_parameters_get_no_gradient():
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    theta = torch.eye(2, 3).expand(2, 2, 3).clone().requires_grad_(True)
    with pytest.raises(ValueError, match="^theta: augmentation parameters get no gradient"):
        dsa.affine(x, theta, backend="torch")
    b = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="^brightness: augmentation parameters get no"):
        dsa.color(x, b, torch.ones(2), torch.ones(2), backend="torch")
    with torch.no_grad():  # nothing is differentiated: accepted
        dsa.affine(x, theta, backend="torch")


# ----------------------------------------------------------------------------- routing


def _spy(monkeypatch, calls: list) -> None:
    """Wrap every launcher of every runnable DSA backend so that calls record themselves."""
    for name in backends.available("dsa", "cpu"):
        mod = backends.launchers("dsa", name)
        for fn in LAUNCHERS:
            orig = getattr(mod, fn)

            def wrapped(*a, _orig=orig, _tag=(name, fn)):
                calls.append(_tag)
                return _orig(*a)

            monkeypatch.setattr(mod, fn, wrapped)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_routing_runs_the_backend_asked_for(backend, dtype, monkeypatch, require_backend):
    """Through ``augment.apply`` with all six groups, forward and backward run the asked
    backend's launchers (the adjoints included) and no other backend's."""
    require_backend("dsa", backend, "cpu")
    calls: list = []
    _spy(monkeypatch, calls)
    x = torch.randn(4, 3, 10, 9).to(dtype).requires_grad_(True)
    params = mtt_fast.augment.sample(4, generator=torch.Generator().manual_seed(0), mode="M")
    mtt_fast.augment.apply(x, params, backend=backend).sum().backward()
    assert {b for b, _ in calls} == {backend}
    ran = {fn for _, fn in calls}
    assert {"affine", "affine_adjoint", "crop", "crop_adjoint", "color", "color_adjoint",
            "flip", "cutout"} <= ran
    assert x.grad is not None and x.grad.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_auto_routes_by_dtype(dtype, monkeypatch):
    """CPU auto: the compiled op for float32 / float64 when built; float16 / bfloat16
    (which it does not take) to the reference, never to Triton's interpreter."""
    monkeypatch.delenv("MTT_FAST_BACKEND", raising=False)
    calls: list = []
    _spy(monkeypatch, calls)
    x = torch.randn(2, 3, 8, 8).to(dtype)
    dsa.flip(x, torch.tensor([True, False]))
    native = "native" in backends.available("dsa", "cpu")
    want = "native" if native and dtype in (torch.float32, torch.float64) else "torch"
    assert backends.last_used["dsa"] == want and calls == [(want, "flip")]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_explicit_native_rejects_half(dtype):
    with pytest.raises(ValueError, match=r"backend 'native' is not available for op 'dsa' on "
                       rf"cpu {str(dtype)[6:]} tensors .*available: .*torch"):
        dsa.flip(torch.randn(2, 3, 8, 8).to(dtype), torch.tensor([True, False]), backend="native")


# ----------------------------------------------------------------------------- compiled ops


def _op_cases(dsa_params):
    g = torch.Generator().manual_seed(4)
    B, C, H, W = 3, 2, 9, 7
    x = torch.randn(B, C, H, W, generator=g)
    (theta,) = dsa_params("affine_rotate", B, H, W, g)
    (shift,) = dsa_params("crop", B, H, W, g)
    center, (h, w) = dsa_params("cutout", B, H, W, g)
    b, s, c = dsa_params("color", B, H, W, g)
    return {
        "dsa_affine": (x, theta),
        "dsa_affine_backward": (x, theta),
        "dsa_flip": (x, torch.tensor([True, False, True])),
        "dsa_crop": (x, shift),
        "dsa_cutout": (x, center, h, w),
        "dsa_color": (x, b, s, c),
        "dsa_color_backward": (x, s, c),
    }


@pytest.mark.parametrize("name", ["dsa_affine", "dsa_affine_backward", "dsa_flip", "dsa_crop",
                                  "dsa_cutout", "dsa_color", "dsa_color_backward"])
def test_opcheck(name, dsa_params, require_backend):
    require_backend("dsa", "native", "cpu")
    import mtt_fast.ops.dsa.native  # noqa: F401  (registers the fake kernels)

    torch.library.opcheck(getattr(torch.ops.mtt_fast, name).default, _op_cases(dsa_params)[name])


def test_compiled_op_errors_name_the_argument(require_backend):
    require_backend("dsa", "native", "cpu")
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match=r"theta: expected shape \[2, 2, 3\], got \[2, 3\]"):
        torch.ops.mtt_fast.dsa_affine(x, torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="shift: expected an integer tensor"):
        torch.ops.mtt_fast.dsa_crop(x, torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="x: expected dtype float32 or float64"):
        torch.ops.mtt_fast.dsa_flip(x.half(), torch.zeros(2, dtype=torch.bool))


def test_native_launchers_without_extension_raise_clearly(monkeypatch):
    from mtt_fast.ops.dsa import native

    monkeypatch.setitem(_ext._state, "tried", True)
    monkeypatch.setitem(_ext._state, "ok", False)
    monkeypatch.setitem(_ext._state, "error", "simulated: not built")
    with pytest.raises(RuntimeError, match="native DSA ops are unavailable: simulated"):
        native.flip(torch.randn(1, 1, 2, 2), torch.tensor([True]))
    with pytest.raises(ValueError, match=r"backend 'native' is not available .*simulated"):
        dsa.flip(torch.randn(1, 1, 2, 2), torch.tensor([True]), backend="native")


def test_triton_module_imports_without_triton(load_without_triton):
    mod = load_without_triton("dsa")
    assert not mod.available()
    with pytest.raises(RuntimeError, match="triton"):
        mod.flip(torch.zeros(1, 1, 2, 2), torch.ones(1, dtype=torch.bool))


@pytest.mark.parametrize("name", ["dsa_affine", "dsa_affine_backward", "dsa_flip", "dsa_crop",
                                  "dsa_cutout", "dsa_color", "dsa_color_backward"])
def test_compiled_ops_are_differentiable_as_the_function(name, dsa_params, require_backend):
    """The autograd formula registered for each compiled op (used wherever the raw op is
    called: torch.compile graphs, AOTAutograd) gives the very gradient of the autograd
    Function of mtt_fast.ops.dsa, and is differentiable again (float64 gradgradcheck)."""
    require_backend("dsa", "native", "cpu")
    import mtt_fast.ops.dsa.native  # noqa: F401  (registers the autograd formulas)

    op = getattr(torch.ops.mtt_fast, name)
    x, *params = _op_cases(dsa_params)[name]
    x = x.double().requires_grad_(True)
    params = [p.double() if torch.is_tensor(p) and p.is_floating_point() else p for p in params]
    g = torch.randn_like(x)
    (got,) = torch.autograd.grad(op(x, *params), x, g)
    launcher = {"dsa_affine": "affine", "dsa_affine_backward": "affine_adjoint",
                "dsa_flip": "flip", "dsa_crop": "crop", "dsa_cutout": "cutout",
                "dsa_color": "color", "dsa_color_backward": "color_adjoint"}[name]
    fparams = list(params)
    if name == "dsa_cutout":
        fparams = [params[0], (params[1], params[2])]
    elif name == "dsa_color_backward":
        fparams = [torch.zeros_like(params[0]), *params]
    (want,) = torch.autograd.grad(
        dsa._DSAFunction.apply(launcher, "native", x, *fparams), x, g)
    assert torch.equal(got, want)
    xs = x[:2].detach().requires_grad_(True)
    small = [p[:2] if torch.is_tensor(p) else p for p in params]
    assert torch.autograd.gradgradcheck(lambda t: op(t, *small), (xs,))
