"""Test-wide settings and the fixtures shared by the op suites.

Triton kernels run on CPU tensors through the interpreter; the flag must be set before
triton is imported, so it is set here when no GPU is visible.

Markers: ``slow`` (longer cases; deselect with ``-m "not slow"``) and ``cuda`` (needs a
GPU; skipped with a reason without one). ``MTT_FAST_REQUIRE_EXT=1`` (set by CI) turns the
skip of a test that needs the compiled extension into a failure, so a broken C++ build
cannot pass as "skipped".
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# no compile-on-first-use from inside the tests (tests/test_packaging.py tests it itself)
os.environ.setdefault("MTT_FAST_JIT", "0")

REQUIRE_EXT = os.environ.get("MTT_FAST_REQUIRE_EXT", "0") == "1"

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ],
    ),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Every op test runs on CPU and, where a GPU is visible, on CUDA."""
    return request.param


@pytest.fixture
def require_backend():
    """``need(op, backend, device)``: skip when ``backend`` cannot run ``op`` on ``device``
    (saying why), or fail when it is the compiled backend and ``MTT_FAST_REQUIRE_EXT=1``."""
    from mtt_fast import backends

    def need(op: str, backend: str, device) -> None:
        try:
            backends.resolve(op, backend, device)
        except ValueError as exc:
            if backend == "native" and REQUIRE_EXT:
                pytest.fail(f"MTT_FAST_REQUIRE_EXT=1 but the compiled extension is missing: {exc}")
            pytest.skip(str(exc))

    return need


# ----------------------------------------------------------------------------- DSA cases

@pytest.fixture
def dsa_params():
    """``make(case, B, H, W, g)``: fresh random parameters of one DSA op (after the images),
    on the CPU, as :func:`mtt_fast.augment.sample` + ``resolve`` give them (``affine_general``
    adds anisotropic scale and translation)."""

    def make(case: str, B: int, H: int, W: int, g: torch.Generator) -> tuple:
        def u(*s):
            return torch.rand(*s, generator=g)

        z = torch.zeros(B)
        if case == "affine_scale":
            s = u(B, 2) * (1.2 - 1 / 1.2) + 1 / 1.2
            rows = [torch.stack([s[:, 0], z, z], 1), torch.stack([z, s[:, 1], z], 1)]
            return (torch.stack(rows, 1),)
        if case == "affine_rotate":
            a = (u(B) - 0.5) * 2 * 15 / 180 * math.pi
            rows = [torch.stack([a.cos(), -a.sin(), z], 1), torch.stack([a.sin(), a.cos(), z], 1)]
            return (torch.stack(rows, 1),)
        if case == "affine_general":
            a = (u(B) - 0.5) * 0.6
            sx, sy = u(B) * 0.5 + 0.8, u(B) * 0.5 + 0.8
            tx, ty = (u(B) - 0.5) * 0.3, (u(B) - 0.5) * 0.3
            rows = [
                torch.stack([sx * a.cos(), -a.sin(), tx], 1),
                torch.stack([a.sin(), sy * a.cos(), ty], 1),
            ]
            return (torch.stack(rows, 1),)
        if case == "flip":
            mask = u(B) < 0.5
            mask[0], mask[-1] = True, False
            return (mask,)
        if case == "crop":
            sy, sx = int(H * 0.125 + 0.5), int(W * 0.125 + 0.5)
            dy = torch.randint(-sy, sy + 1, (B,), generator=g)
            dx = torch.randint(-sx, sx + 1, (B,), generator=g)
            return (torch.stack([dy, dx], 1),)
        if case == "cutout":
            h, w = H // 2 + 1, W // 2  # odd and even sides
            cy = torch.randint(0, H + 1, (B,), generator=g)
            cx = torch.randint(0, W + 1, (B,), generator=g)
            return (torch.stack([cy, cx], 1), (h, w))
        if case == "color":
            return (u(B) - 0.5, u(B) * 2, u(B) + 0.5)
        raise AssertionError(case)

    return make


# ----------------------------------------------------------------------------- ZCA cases


@pytest.fixture
def numpy_zca():
    """``fit(x, eps) -> (mean, T, T^-1)``: kornia's ZCAWhitening formula written
    independently, in numpy float64 with an SVD of ``np.cov`` (ddof=1)."""

    def fit(x: np.ndarray, eps: float):
        flat = x.reshape(len(x), -1).astype(np.float64)
        cov = np.cov(flat, rowvar=False, ddof=1)
        u, s, _ = np.linalg.svd(cov)
        return flat.mean(0), (u / np.sqrt(s + eps)) @ u.T, (u * np.sqrt(s + eps)) @ u.T

    return fit


@functools.cache
def _zca_fit_cached(chw: tuple, n: int, seed: int):
    from mtt_fast.ops.zca import zca_fit

    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, *chw, generator=g) * torch.rand(1, *chw, generator=g)
    return zca_fit(imgs, eps=0.1)


@pytest.fixture
def zca_state():
    """``make(chw, n=64, seed=0) -> (mean, matrix, inverse)``: a fit on random images with
    uneven variances (float32, CPU; cached across tests, never modify it in place)."""

    def make(chw: tuple, n: int = 64, seed: int = 0):
        return _zca_fit_cached(tuple(chw), n, seed)

    return make


@pytest.fixture(scope="session")
def data_root():
    """The project's real data folder, ``../shared/data`` beside the repository (skips if absent)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent (the repository's ../shared/data)")
    return root


@pytest.fixture(scope="session")
def digits_subset():
    """``make(n_train, n_test)``: the first images of scikit-learn's digits as a
    :class:`mtt_fast.data.Prepared` (offline, normalised, cached)."""
    from mtt_fast.data import Prepared, prepare

    full = prepare("digits")

    @functools.cache
    def make(n_train: int, n_test: int) -> Prepared:
        return Prepared(
            name=full.name,
            train_images=full.train_images[:n_train],
            train_labels=full.train_labels[:n_train],
            test_images=full.test_images[:n_test],
            test_labels=full.test_labels[:n_test],
            classes=full.classes,
            mean=full.mean,
            std=full.std,
        )

    return make


@pytest.fixture
def load_without_triton(monkeypatch):
    """``load_without_triton("dsa")``: a fresh copy of ``mtt_fast/ops/<op>/triton.py`` (and of
    the shared ``mtt_fast/ops/_triton.py`` it imports) executed as if triton were absent."""
    import importlib.util
    import sys
    from pathlib import Path

    import mtt_fast

    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    ops = Path(mtt_fast.__file__).parent / "ops"

    def load(op: str):
        mods = []
        for name, path in (("mtt_fast.ops._triton", ops / "_triton.py"),
                           (f"_no_triton_{op}", ops / op / "triton.py")):  # fmt: skip
            spec = importlib.util.spec_from_file_location(name, path)
            mods.append(importlib.util.module_from_spec(spec))
            monkeypatch.setitem(sys.modules, name, mods[-1])
            spec.loader.exec_module(mods[-1])
        assert not mods[0].available()
        return mods[1]

    return load
