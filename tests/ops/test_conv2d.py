"""The twice-differentiable convolution (mtt_fast.ops.conv2d) against F.conv2d: forward,
backward, double backward, gradcheck / gradgradcheck, and pruning of unneeded gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtt_fast.ops.conv2d import conv2d, torch_impl


@pytest.mark.parametrize(("ci", "size", "bias", "pad"),
                         [(2, (5, 6), True, 1), (3, (4, 4), False, 1), (2, (6, 5), True, 3),
                          (1, (3, 7), True, 0)])
def test_gradcheck_gradgradcheck(ci, size, bias, pad):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, ci, *size, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, ci, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    args = (x, w, b) if bias else (x, w)

    def fn(*a):
        return conv2d(a[0], a[1], a[2] if bias else None, pad)

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def _orders(fn, x, w, b, gy, v, wrt_first):
    y = fn(x, w, b)
    gs = torch.autograd.grad(y, wrt_first, gy, create_graph=True)
    s = sum((a * c).sum() for a, c in zip(gs, v))
    gg = torch.autograd.grad(s, (x, w, gy), allow_unused=True, materialize_grads=True)
    return [y] + list(gs) + list(gg)


@pytest.mark.parametrize("first_layer", [False, True])
def test_matches_autograd_float64(first_layer):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 9, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(3, 5, 9, 7, generator=g, dtype=torch.float64, requires_grad=True)
    # the student's gradient: parameters only (first layer) or also the input
    wrt = (w, b) if first_layer else (x, w, b)
    v = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in wrt]
    got = _orders(lambda *a: conv2d(*a, padding=1), x, w, b, gy, v, wrt)
    ref = _orders(lambda *a: F.conv2d(*a, padding=1), x, w, b, gy, v, wrt)
    for a, e in zip(got, ref):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_unneeded_input_gradient_is_not_computed(monkeypatch):
    """In grad(loss, params, create_graph=True) the images' gradient is not computed, and
    the double backward then gets no (zero-filled) upstream for it."""
    seen = []
    orig_b, orig_db = torch_impl.backward, torch_impl.double_backward
    monkeypatch.setattr(torch_impl, "backward",
                        lambda gy, x, w, p, need: seen.append(("b", need)) or orig_b(gy, x, w, p, need))
    monkeypatch.setattr(torch_impl, "double_backward",
                        lambda ggx, *a: seen.append(("db", ggx is None)) or orig_db(ggx, *a))
    x0 = torch.randn(2, 3, 6, 6, requires_grad=True)
    x = x0 * 1.0  # a non-leaf input, as augmented images are
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = conv2d(x, w, b, 1)
    gw, gb = torch.autograd.grad(y.square().sum(), (w, b), create_graph=True)
    assert seen[0] == ("b", (False, True, True))
    torch.autograd.grad(gw.sum() + gb.sum(), x0)
    assert ("db", True) in seen


def test_bad_shapes():
    with pytest.raises(ValueError, match="conv2d"):
        conv2d(torch.randn(2, 3, 5, 5), torch.randn(4, 2, 3, 3))
