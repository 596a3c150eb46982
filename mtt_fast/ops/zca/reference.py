"""Reference ZCA ops in plain PyTorch: the spec, the CPU fallback and the test oracle.

The whitening is kornia's ``ZCAWhitening(eps=0.1)``: images flattened to ``D = C*H*W``,
centred by the mean image, unbiased covariance ``Sigma = U diag(S) U^T``, whitening matrix
``U diag(1 / sqrt(S + eps)) U^T`` and its inverse ``U diag(sqrt(S + eps)) U^T``; applied as
``(x - mean) @ matrix`` on row vectors.
"""

from __future__ import annotations

import torch

__all__ = ["default_scale", "check_apply_args", "zca_apply", "zca_fit"]


def default_scale(x: torch.Tensor, scale: float | None) -> float:
    """``scale`` if given, else ``1/255`` for uint8 images and ``1`` for float images."""
    if scale is not None:
        return float(scale)
    return 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0


def check_apply_args(
    x: torch.Tensor, mean: torch.Tensor, matrix: torch.Tensor
) -> tuple[int, int]:
    """Validate ``zca_apply`` arguments; return ``(N, D)``.

    Raises:
        ValueError: ``x`` is not a batch of images, is neither uint8 nor float, or
            ``mean`` / ``matrix`` do not have shapes ``(D,)`` / ``(D, D)`` with
            ``D = C*H*W`` of ``x``.
    """
    if not torch.is_tensor(x) or x.dim() < 2:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"zca_apply expects images of shape (N, C, H, W), got {got}")
    if not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise ValueError(f"zca_apply expects uint8 or float images, got dtype {x.dtype}")
    N = x.shape[0]
    D = 1
    for s in x.shape[1:]:
        D *= s
    if tuple(mean.shape) != (D,):
        raise ValueError(
            f"zca_apply: mean must have shape (D,) = ({D},) for images of shape "
            f"{tuple(x.shape)} (D = C*H*W), got {tuple(mean.shape)}"
        )
    if tuple(matrix.shape) != (D, D):
        raise ValueError(
            f"zca_apply: matrix must have shape (D, D) = ({D}, {D}) for images of shape "
            f"{tuple(x.shape)} (D = C*H*W), got {tuple(matrix.shape)}"
        )
    return N, D


def zca_apply(
    x: torch.Tensor,
    mean: torch.Tensor,
    matrix: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Whiten images: ``((x * scale).flatten(1) - mean) @ matrix``, in float32.

    Args:
        x: (N, C, H, W) uint8 or float images (any layout).
        mean: (D,) mean image, D = C*H*W.
        matrix: (D, D) whitening matrix (row-vector convention).
        scale: multiplies ``x`` first; default ``1/255`` for uint8 and ``1`` for float.

    Returns:
        (N, C, H, W) float32 on ``x``'s device; differentiable in ``x`` (float), ``mean``
        and ``matrix``. Float64 inputs are computed in float32.
    """
    check_apply_args(x, mean, matrix)
    s = default_scale(x, scale)
    xf = x.to(torch.float32).reshape(x.shape[0], -1) * s
    m = mean.to(device=x.device, dtype=torch.float32)
    w = matrix.to(device=x.device, dtype=torch.float32)
    return ((xf - m) @ w).reshape(x.shape)


def zca_fit(
    images: torch.Tensor, eps: float = 0.1, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit ZCA whitening (kornia ``ZCAWhitening(eps)``), computed in float64.

    Args:
        images: (N, C, H, W) uint8 or float, N >= 2.
        eps: added to the covariance eigenvalues (default 0.1).
        scale: multiplies the images first; default ``1/255`` for uint8, ``1`` for float
            (the same rule as :func:`zca_apply`).

    Returns:
        ``(mean (D,), matrix (D, D), inverse_matrix (D, D))`` float32 on the images'
        device. Eigenvalues below zero (round-off of a rank-deficient covariance) are
        clamped to zero, as the singular values kornia uses would be ``|lambda|``.
    """
    if not torch.is_tensor(images) or images.dim() < 2 or images.shape[0] < 2:
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"zca_fit needs at least 2 images of shape (N, C, H, W), got {got}")
    if eps < 0:
        raise ValueError(f"zca_fit: eps must be >= 0, got {eps!r}")
    s = default_scale(images, scale)
    x = images.reshape(images.shape[0], -1).to(torch.float64) * s
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0) + eps
    matrix = (evecs * evals.rsqrt()) @ evecs.T
    inverse = (evecs * evals.sqrt()) @ evecs.T
    return mean.float(), matrix.float(), inverse.float()
