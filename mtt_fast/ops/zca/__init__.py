"""ZCA ops with backend dispatch (see :mod:`mtt_fast.backends`).

``zca_apply`` whitens images with a fitted ``(mean, matrix)``; ``zca_fit`` fits them
(kornia's ``ZCAWhitening(eps=0.1)`` formula, in float64). Backends of ``zca_apply``:
``torch`` (:mod:`.reference`), ``triton`` (:mod:`.triton`, one fused kernel) and
``native`` (the compiled op, :mod:`.native`).
"""

from __future__ import annotations

import importlib

import torch

from mtt_fast import backends
from mtt_fast.ops.zca import reference
from mtt_fast.ops.zca.reference import check_apply_args, default_scale

__all__ = ["zca_apply", "zca_fit"]

# rows of the centred images per covariance product: bounds zca_fit's extra memory to
# about _FIT_CHUNK * D * 8 bytes besides the (D, D) float64 covariance.
_FIT_CHUNK = 4096


def zca_apply(
    x: torch.Tensor,
    mean: torch.Tensor,
    matrix: torch.Tensor,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Whiten images: ``((x * scale).flatten(1) - mean) @ matrix``, float32 out.

    Args:
        x: (N, C, H, W) uint8 or float images.
        mean: (D,) mean image, D = C*H*W.
        matrix: (D, D) whitening (or inverse) matrix, row-vector convention.
        scale: multiplies ``x`` first; default ``1/255`` for uint8 and ``1`` for float.
        backend: ``"auto"`` | ``"torch"`` | ``"native"`` | ``"triton"``; ``None`` reads
            ``MTT_FAST_BACKEND``, else auto. The one used is recorded in
            ``mtt_fast.backends.last_used["zca"]``.

    Returns:
        (N, C, H, W) float32 on ``x``'s device.

    Raises:
        ValueError: bad shapes (naming the expected and the given shape) or an unknown /
            unavailable backend (listing the available ones).
    """
    check_apply_args(x, mean, matrix)
    which = backends.resolve("zca", backend, x.device)
    backends.last_used["zca"] = which
    if which == "torch":
        return reference.zca_apply(x, mean, matrix, scale)
    mod = importlib.import_module(f"mtt_fast.ops.zca.{which}")
    return mod.zca_apply(x, mean, matrix, scale)


def zca_fit(
    images: torch.Tensor,
    eps: float = 0.1,
    device: torch.device | str | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit ZCA whitening in float64 on ``device`` (default: the images' device).

    The covariance is accumulated by matrix products over chunks of images (no float64
    copy of the whole set) and decomposed with ``torch.linalg.eigh`` on that device; a
    device without float64 (or float64 ``eigh``) falls back to the CPU.

    Args:
        images: (N, C, H, W) uint8 or float, N >= 2.
        eps: added to the covariance eigenvalues (default 0.1, kornia's).
        device: where to compute (default ``images.device``).
        scale: multiplies the images first; default ``1/255`` for uint8, ``1`` for float.

    Returns:
        ``(mean (D,), matrix (D, D), inverse_matrix (D, D))`` float32 on ``device``:
        ``matrix = U diag(1/sqrt(S + eps)) U^T``, ``inverse_matrix = U diag(sqrt(S + eps))
        U^T`` for the unbiased covariance ``U diag(S) U^T`` (negative round-off
        eigenvalues clamped to 0).
    """
    if not torch.is_tensor(images) or images.dim() < 2 or images.shape[0] < 2:
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"zca_fit needs at least 2 images of shape (N, C, H, W), got {got}")
    if not (images.dtype == torch.uint8 or images.is_floating_point()):
        raise ValueError(f"zca_fit expects uint8 or float images, got dtype {images.dtype}")
    if eps < 0:
        raise ValueError(f"zca_fit: eps must be >= 0, got {eps!r}")
    dev = torch.device(device) if device is not None else images.device
    s = default_scale(images, scale)
    try:
        mean, cov = _moments(images, s, dev)
    except (RuntimeError, TypeError):  # e.g. MPS: no float64 tensors
        mean, cov = _moments(images, s, torch.device("cpu"))
    try:
        evals, evecs = torch.linalg.eigh(cov)
    except (RuntimeError, TypeError, NotImplementedError):
        evals, evecs = torch.linalg.eigh(cov.cpu())
    evals = evals.clamp_min(0) + eps
    matrix = (evecs * evals.rsqrt()) @ evecs.T
    inverse = (evecs * evals.sqrt()) @ evecs.T
    return tuple(t.to(device=dev, dtype=torch.float32) for t in (mean, matrix, inverse))


def _moments(images: torch.Tensor, s: float, dev: torch.device):
    N = images.shape[0]
    flat = images.reshape(N, -1)
    D = flat.shape[1]
    total = torch.zeros(D, dtype=torch.float64, device=dev)
    for i in range(0, N, _FIT_CHUNK):
        total += flat[i : i + _FIT_CHUNK].to(device=dev, dtype=torch.float64).sum(0)
    mean = total * s / N
    cov = torch.zeros(D, D, dtype=torch.float64, device=dev)
    for i in range(0, N, _FIT_CHUNK):
        xc = flat[i : i + _FIT_CHUNK].to(device=dev, dtype=torch.float64) * s - mean
        cov.addmm_(xc.T, xc)
    cov /= N - 1
    return mean, cov
