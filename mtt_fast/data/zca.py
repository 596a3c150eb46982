"""ZCA whitening that matches kornia's ``ZCAWhitening(eps=0.1)`` as used by the original MTT
code: a fitted state over the one specification in :mod:`mtt_fast.ops.zca`."""

from __future__ import annotations

import torch

from mtt_fast.ops.zca import zca_apply, zca_fit, zca_inverse


class ZCA:
    """ZCA whitening fitted on a training set.

    Matches kornia's ``ZCAWhitening(eps=eps)`` (unbiased covariance, no dimension
    reduction): with the train mean ``m (D,)`` and the eigen-decomposition
    ``Cov = U diag(S) U^T`` of the unbiased covariance of the centred flattened images,

    * ``T = U diag(1 / sqrt(S + eps)) U^T``, ``transform(x) = (x - m) @ T``;
    * ``T^-1 = U diag(sqrt(S + eps)) U^T``, ``inverse(y) = y @ T^-1 + m``.

    The fit runs in float64 (``torch.linalg.eigh``); the fitted state is stored as float32.
    Fit, apply and inverse are the one specification, :mod:`mtt_fast.ops.zca.reference`;
    :meth:`transform` runs the ``zca_apply`` op on the backend asked for.

    Attributes:
        eps: regulariser added to the eigenvalues.
        mean: ``(D,)`` float32 train mean, or None before :meth:`fit`.
        matrix: ``(D, D)`` float32 whitening matrix ``T``.
        inverse_matrix: ``(D, D)`` float32 ``T^-1``.
        shape: ``(C, H, W)`` of the images it was fitted on.

    Example:
        >>> zca = ZCA(eps=0.1).fit(train_images)        # (N, C, H, W)
        >>> white = zca.transform(train_images); back = zca.inverse(white)
    """

    def __init__(self, eps: float = 0.1) -> None:
        eps = float(eps)
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps
        self.mean: torch.Tensor | None = None
        self.matrix: torch.Tensor | None = None
        self.inverse_matrix: torch.Tensor | None = None
        self.shape: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        state = f"shape={self.shape}" if self.fitted else "unfitted"
        return f"ZCA(eps={self.eps}, {state})"

    @property
    def fitted(self) -> bool:
        return self.matrix is not None

    def fit(self, images: torch.Tensor) -> ZCA:
        """Fit on ``images (N, C, H, W)`` float or uint8 (scaled by 1/255), N >= 2.

        Runs on the device of ``images``; the covariance is accumulated in float64 blocks
        of rows, so memory beyond the input is ``O(D^2)``.

        Returns:
            ``self``.
        """
        images = torch.as_tensor(images)
        self.mean, self.matrix, self.inverse_matrix = zca_fit(images, self.eps)
        self.shape = tuple(int(v) for v in images.shape[1:])
        return self

    def _check(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError(f"ZCA.{what} called before ZCA.fit (or from_state_dict)")
        x = torch.as_tensor(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            c, h, w = self.shape
            raise ValueError(
                f"ZCA.{what}: expected images of shape (N, {c}, {h}, {w}) as fitted, got {tuple(x.shape)}"
            )
        return x

    def transform(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """Whiten ``x (N, C, H, W)`` float or uint8 (uint8 scaled by 1/255).

        Args:
            x: images with the fitted ``(C, H, W)``.
            backend: ``None`` (``MTT_FAST_BACKEND``, else auto) | ``"auto"`` | ``"torch"``
                (the reference) | ``"native"`` | ``"triton"``: the backend of
                :func:`mtt_fast.ops.zca.zca_apply` (auto picks by device and dtype; float64
                goes to the exact reference). An unknown or unavailable one is a
                ``ValueError`` listing what exists.

        Returns:
            ``(N, C, H, W)`` whitened, float32 for uint8 input, else the dtype of ``x``.
        """
        x = self._check(x, "transform")
        out = zca_apply(x, self.mean, self.matrix, backend=backend)
        return out if x.dtype == torch.uint8 else out.to(x.dtype)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`transform`: ``x @ T^-1 + mean`` for ``x (N, C, H, W)``.

        Returns:
            ``(N, C, H, W)`` in [0, 1] units (not clamped), dtype as :meth:`transform`.
        """
        x = self._check(x, "inverse")
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        out = zca_inverse(x, self.mean, self.inverse_matrix)
        return out.to(x.dtype)

    def to(self, device: torch.device | str) -> ZCA:
        """Move the fitted tensors to ``device`` (in place); returns ``self``."""
        if self.fitted:
            self.mean = self.mean.to(device)
            self.matrix = self.matrix.to(device)
            self.inverse_matrix = self.inverse_matrix.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All state as tensors (``eps``, ``shape``, ``mean``, ``matrix``, ``inverse_matrix``),
        so it can go to ``torch.save`` (``weights_only=True`` loads it) or safetensors."""
        if not self.fitted:
            raise RuntimeError("ZCA.state_dict called before ZCA.fit")
        return {
            "eps": torch.tensor(self.eps, dtype=torch.float64),
            "shape": torch.tensor(self.shape, dtype=torch.int64),
            "mean": self.mean.detach().cpu().contiguous(),
            "matrix": self.matrix.detach().cpu().contiguous(),
            "inverse_matrix": self.inverse_matrix.detach().cpu().contiguous(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> ZCA:
        """Rebuild a fitted ZCA from :meth:`state_dict`'s output."""
        missing = [
            k for k in ("eps", "shape", "mean", "matrix", "inverse_matrix") if k not in state
        ]
        if missing:
            raise ValueError(f"ZCA state is missing {missing}")
        shape = tuple(int(v) for v in torch.as_tensor(state["shape"]).reshape(-1).tolist())
        d = 1
        for v in shape:
            d *= v
        mean = torch.as_tensor(state["mean"], dtype=torch.float32)
        mat = torch.as_tensor(state["matrix"], dtype=torch.float32)
        inv = torch.as_tensor(state["inverse_matrix"], dtype=torch.float32)
        if len(shape) != 3 or mean.shape != (d,) or mat.shape != (d, d) or inv.shape != (d, d):
            raise ValueError(
                f"inconsistent ZCA state: shape {shape}, mean {tuple(mean.shape)}, matrix "
                f"{tuple(mat.shape)}, inverse_matrix {tuple(inv.shape)}"
            )
        z = cls(float(torch.as_tensor(state["eps"])))
        z.mean, z.matrix, z.inverse_matrix, z.shape = mean, mat, inv, shape
        return z
