"""The ZCA specification (fit, apply, inverse) in plain PyTorch: used by the data pipeline
(:class:`mtt_fast.data.ZCA`), the launcher of the ``torch`` backend of
:func:`mtt_fast.ops.zca.zca_apply`, and the test oracle of its kernels.

The whitening is kornia's ``ZCAWhitening(eps=0.1)``: images scaled (``1/255`` for uint8)
and flattened to ``D = C*H*W``, centred by the train mean ``m``, unbiased covariance
``Sigma = U diag(S) U^T``, whitening matrix ``T = U diag(1 / sqrt(S + eps)) U^T`` and its
inverse ``U diag(sqrt(S + eps)) U^T``; applied on row vectors as ``(x * scale - m) @ T``.

Compute dtype: float64 for float64 images, float32 for everything else (uint8, float16,
bfloat16, float32); the result has the compute dtype.
"""

from __future__ import annotations

import torch

__all__ = ["compute_dtype", "default_scale", "zca_apply", "zca_fit", "zca_inverse"]

# rows of the centred images per covariance product: bounds zca_fit's extra memory to
# about _FIT_CHUNK * D * 8 bytes besides the (D, D) float64 covariance.
_FIT_CHUNK = 4096


def default_scale(x: torch.Tensor, scale: float | None) -> float:
    """``scale`` if given, else ``1/255`` for uint8 images and ``1`` for float images."""
    if scale is not None:
        return float(scale)
    return 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 images, float32 for uint8 and the other float dtypes."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def zca_apply(
    x: torch.Tensor, mean: torch.Tensor, matrix: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Whiten images: ``((x * scale).flatten(1) - mean) @ matrix``.

    Args:
        x: (N, C, H, W) uint8 or float images (any layout).
        mean: (D,) mean image, D = C*H*W.
        matrix: (D, D) whitening matrix (row-vector convention).
        scale: multiplies ``x`` first; default ``1/255`` for uint8 and ``1`` for float.

    Returns:
        (N, C, H, W) in the compute dtype on ``x``'s device; differentiable in float ``x``,
        ``mean`` and ``matrix`` when called directly.
    """
    ct = compute_dtype(x.dtype)
    s = default_scale(x, scale)
    xf = x.to(ct).reshape(x.shape[0], -1) * s
    m = mean.to(device=x.device, dtype=ct)
    w = matrix.to(device=x.device, dtype=ct)
    return ((xf - m) @ w).reshape(x.shape)


def zca_inverse(
    y: torch.Tensor, mean: torch.Tensor, inverse_matrix: torch.Tensor
) -> torch.Tensor:
    """Undo :func:`zca_apply`: ``y.flatten(1) @ inverse_matrix + mean``.

    Args:
        y: (N, C, H, W) float whitened images.
        mean: (D,) the fitted mean.
        inverse_matrix: (D, D) the fitted inverse whitening matrix.

    Returns:
        (N, C, H, W) in the compute dtype of ``y`` (the scaled units: [0, 1] for images
        fitted as uint8), not clamped.
    """
    ct = compute_dtype(y.dtype)
    flat = y.to(ct).reshape(y.shape[0], -1)
    out = flat @ inverse_matrix.to(device=y.device, dtype=ct) + mean.to(device=y.device, dtype=ct)
    return out.reshape(y.shape)


def zca_fit(
    images: torch.Tensor,
    eps: float = 0.1,
    scale: float | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit ZCA whitening (kornia ``ZCAWhitening(eps)``), computed in float64.

    The covariance is accumulated by matrix products over chunks of images (no float64
    copy of the whole set) and decomposed with ``torch.linalg.eigh`` on ``device``; a device
    without float64 (or float64 ``eigh``, e.g. MPS) falls back to the CPU.

    Args:
        images: (N, C, H, W) uint8 or float, N >= 2.
        eps: added to the covariance eigenvalues (default 0.1, kornia's); must be > 0 when
            the covariance is singular.
        scale: multiplies the images first; default ``1/255`` for uint8, ``1`` for float
            (the rule of :func:`zca_apply`).
        device: where to compute and return (default: the images' device).

    Returns:
        ``(mean (D,), matrix (D, D), inverse_matrix (D, D))`` float32 on ``device``.
        Eigenvalues below zero (round-off of a rank-deficient covariance) are clamped to
        zero, as the singular values kornia uses would be ``|lambda|``.

    Raises:
        ValueError: not (N >= 2, C, H, W) uint8 / float images, ``eps < 0``, or a singular
            covariance with ``eps == 0``.
    """
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[0] < 2:
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images: expected at least 2 images of shape (N, C, H, W), got {got}")
    if not (images.dtype == torch.uint8 or images.is_floating_point()):
        raise ValueError(f"images: expected uint8 or float, got {images.dtype}")
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"eps: expected >= 0, got {eps!r}")
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
    evals = evals.clamp_min(0)
    if eps == 0 and bool((evals == 0).any()):
        raise ValueError("eps: the covariance is singular, ZCA needs eps > 0 for these images")
    evals = evals + eps
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
