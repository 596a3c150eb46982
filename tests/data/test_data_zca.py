"""ZCA: kornia's ZCAWhitening(eps) semantics, checked against an independent float64 numpy
implementation and, on real CIFAR-10 images, by the whitened covariance."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from mtt_fast import backends
from mtt_fast.data import ZCA, load_dataset
from mtt_fast.ops.zca import reference as zca_reference
from mtt_fast.ops.zca import zca_fit

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.parametrize("n,shape,eps", [(40, (2, 3, 4), 0.1), (7, (1, 5, 3), 0.01)])
def test_zca_matches_numpy_float64(n, shape, eps, numpy_zca):
    rng = np.random.default_rng(1)
    x = rng.random((n, *shape)) * rng.random(shape)  # correlated-ish, uneven variances
    mean, t, t_inv = numpy_zca(x, eps)
    z = ZCA(eps=eps).fit(torch.from_numpy(x).float())
    assert z.mean.dtype == z.matrix.dtype == z.inverse_matrix.dtype == torch.float32
    d = int(np.prod(shape))
    assert z.mean.shape == (d,) and z.matrix.shape == (d, d) and z.inverse_matrix.shape == (d, d)
    np.testing.assert_allclose(z.mean.numpy(), mean, atol=1e-6)
    np.testing.assert_allclose(z.matrix.numpy(), t, rtol=1e-4, atol=1e-4 * np.abs(t).max())
    np.testing.assert_allclose(z.inverse_matrix.numpy(), t_inv, atol=1e-5)
    y = rng.random((3, *shape))
    want = ((y.reshape(3, -1) - mean) @ t).reshape(y.shape)
    got = z.transform(torch.from_numpy(y).float(), backend="torch")
    assert got.shape == y.shape and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4 * np.abs(want).max())
    back = z.inverse(got)
    np.testing.assert_allclose(back.numpy(), y, atol=1e-4)


def test_zca_is_the_one_specification():
    """ZCA's state and transforms are exactly the ops' fit, zca_apply and inverse."""
    g = torch.Generator().manual_seed(3)
    x8 = torch.randint(0, 256, (30, 2, 3, 4), dtype=torch.uint8, generator=g)
    z = ZCA(eps=0.1).fit(x8)
    for a, b in zip((z.mean, z.matrix, z.inverse_matrix), zca_fit(x8, eps=0.1)):
        assert torch.equal(a, b)
    white = z.transform(x8, backend="torch")
    assert torch.equal(white, zca_reference.zca_apply(x8, z.mean, z.matrix))
    assert torch.equal(z.inverse(white), zca_reference.zca_inverse(white, z.mean, z.inverse_matrix))
    xh = x8.half() / 255  # kernels and reference compute halves in float32, return the input dtype
    assert z.transform(xh).dtype == torch.float16


def test_zca_uint8_state_and_errors():
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (20, 1, 3, 3), dtype=torch.uint8, generator=g)
    z = ZCA().fit(x8)
    zf = ZCA().fit(x8.double() / 255)
    torch.testing.assert_close(z.matrix, zf.matrix)
    torch.testing.assert_close(z.transform(x8), zf.transform(x8.float() / 255))

    buf = io.BytesIO()
    torch.save(z.state_dict(), buf)
    buf.seek(0)
    z2 = ZCA.from_state_dict(torch.load(buf, weights_only=True))
    assert z2.eps == z.eps and z2.shape == (1, 3, 3)
    assert torch.equal(z2.matrix, z.matrix) and torch.equal(z2.transform(x8), z.transform(x8))

    with pytest.raises(RuntimeError, match="before ZCA.fit"):
        ZCA().transform(x8)
    with pytest.raises(RuntimeError, match="before ZCA.fit"):
        ZCA().inverse(x8.float())
    with pytest.raises(
        ValueError, match=r"expected images of shape \(N, 1, 3, 3\).*got \(2, 3, 3, 3\)"
    ):
        z.transform(torch.zeros(2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, 3, 3\).*got \(9,\)"):
        z.inverse(torch.zeros(9))
    with pytest.raises(ValueError, match="at least 2 images"):
        ZCA().fit(x8[:1])
    with pytest.raises(ValueError, match="bogus"):
        z.transform(x8, backend="bogus")


def test_zca_backends_route(monkeypatch):
    monkeypatch.delenv("MTT_FAST_BACKEND", raising=False)
    x = torch.rand(10, 1, 2, 2, dtype=torch.float64)
    z = ZCA().fit(x)
    ref = z.transform(x, backend="torch")
    assert backends.last_used["zca"] == "torch" and ref.dtype == torch.float64
    torch.testing.assert_close(z.transform(x), ref)  # float64: always the exact torch path
    x8 = (x * 255).round().to(torch.uint8)
    want = z.transform(x8, backend="torch")
    got = z.transform(x8)  # auto: the compiled op when built, else torch
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if "native" in backends.available("zca", "cpu"):
        out = z.transform(x.float(), backend="native")
        assert backends.last_used["zca"] == "native" and out.dtype == torch.float32
        torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-5)
    xr = x.clone().requires_grad_(True)
    z.transform(xr, backend="torch").sum().backward()  # the torch path is differentiable
    torch.testing.assert_close(xr.grad[0].flatten(), z.matrix.double().sum(1))


@pytest.fixture(scope="module")
def cifar_crop():
    """All 4000 cifar10-subset train images, centre 16x16 crop (D = 768) so that the fit
    and the independent eigh below stay cheap on a shared 2-core machine."""
    if not (DATA / "cifar10-subset" / "cifar10_subset.npz").is_file():
        pytest.skip(f"{DATA / 'cifar10-subset'} is absent")
    x = load_dataset("cifar10-subset", root=DATA).images[:, :, 8:24, 8:24].double() / 255
    return x, ZCA(eps=0.1).fit(x)


def test_zca_cifar_whitened_covariance(cifar_crop):
    x, z = cifar_crop
    flat = x.reshape(len(x), -1)
    c = flat - flat.mean(0)
    s, u = torch.linalg.eigh(c.T @ c / (len(x) - 1))  # independent of ZCA.fit
    want = s.clamp_min(0) / (s.clamp_min(0) + 0.1)
    white = z.transform(x.float(), backend="torch").double().reshape(len(x), -1)
    assert white.mean(0).abs().max() < 1e-6
    wc = white - white.mean(0)
    rot = u.T @ (wc.T @ wc / (len(x) - 1)) @ u  # U^T Cov(white) U
    assert (rot.diagonal() - want).abs().max() < 1e-6
    assert (rot - torch.diag(rot.diagonal())).abs().max() < 1e-6


def test_zca_cifar_roundtrip(cifar_crop):
    x, z = cifar_crop
    xf = x.float()
    assert (z.inverse(z.transform(xf)) - xf).abs().max() < 1e-4


@pytest.mark.slow
def test_zca_cifar_full_size():
    """All 4000 images at full size (D = 3072): Cov(white) = C (C + eps I)^-1, which is
    U diag(S / (S + eps)) U^T, and transform followed by inverse returns the input."""
    if not (DATA / "cifar10-subset" / "cifar10_subset.npz").is_file():
        pytest.skip(f"{DATA / 'cifar10-subset'} is absent")
    x8 = load_dataset("cifar10-subset", root=DATA).images
    z = ZCA(eps=0.1).fit(x8)  # uint8 is scaled by 1/255
    x = x8.double().reshape(len(x8), -1) / 255
    c = x - x.mean(0)
    cov = c.T @ c / (len(x) - 1)
    want = torch.linalg.solve(cov + 0.1 * torch.eye(cov.shape[0], dtype=cov.dtype), cov)
    white = z.transform(x8).double().reshape(len(x8), -1)
    wc = white - white.mean(0)
    got = wc.T @ wc / (len(x) - 1)
    assert (got - want).abs().max() < 1e-4
    xf = x8[:300].float() / 255
    white = z.transform(x8[:300])
    assert white.shape == xf.shape and torch.isfinite(white).all()
    assert (z.inverse(white) - xf).abs().max() < 1e-4
