"""ZCA whitening that matches kornia's ``ZCAWhitening(eps=0.1)`` as used by the original MTT code."""

from __future__ import annotations

import torch

from mtt_fast import backends

_CHUNK = 4096  # rows per block when accumulating the covariance


def _as_float(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")
    return x


def zca_reference(x: torch.Tensor, mean: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``(x.flatten(1) - mean) @ matrix`` reshaped back: the whitening (and, with the
    inverse matrix and a zero ``mean`` plus an added mean, its inverse) in plain torch.

    Args:
        x: ``(N, C, H, W)`` float or uint8 (uint8 is scaled by 1/255).
        mean: ``(D,)`` with ``D = C*H*W``.
        matrix: ``(D, D)``.

    Returns:
        ``(N, C, H, W)`` in the floating dtype of ``x`` (float32 for uint8); differentiable.
    """
    x = _as_float(x)
    flat = x.reshape(x.shape[0], -1)
    out = (flat - mean.to(flat)) @ matrix.to(flat)
    return out.reshape(x.shape)


class ZCA:
    """ZCA whitening fitted on a training set.

    Matches kornia's ``ZCAWhitening(eps=eps)`` (unbiased covariance, no dimension
    reduction): with the train mean ``m (D,)`` and the eigen-decomposition
    ``Cov = U diag(S) U^T`` of the unbiased covariance of the centred flattened images,

    * ``T = U diag(1 / sqrt(S + eps)) U^T``, ``transform(x) = (x - m) @ T``;
    * ``T^-1 = U diag(sqrt(S + eps)) U^T``, ``inverse(y) = y @ T^-1 + m``.

    The fit runs in float64 (``torch.linalg.eigh``); the fitted state is stored as float32.

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
        if images.ndim != 4:
            raise ValueError(
                f"ZCA.fit expects images of shape (N, C, H, W), got {tuple(images.shape)}"
            )
        n = images.shape[0]
        if n < 2:
            raise ValueError(f"ZCA.fit needs at least 2 images for an unbiased covariance, got {n}")
        scale = 255.0 if images.dtype == torch.uint8 else 1.0
        _as_float(images[:1])  # dtype check
        flat = images.reshape(n, -1)
        d = flat.shape[1]
        # float64 runs where the images are, except on MPS (no float64 there)
        dev = torch.device("cpu") if images.device.type == "mps" else images.device
        mean = torch.zeros(d, dtype=torch.float64, device=dev)
        for i in range(0, n, _CHUNK):
            mean += flat[i : i + _CHUNK].to(dev, torch.float64).sum(0)
        mean /= n * scale
        cov = torch.zeros(d, d, dtype=torch.float64, device=dev)
        for i in range(0, n, _CHUNK):
            b = flat[i : i + _CHUNK].to(dev, torch.float64) / scale - mean
            cov.addmm_(b.T, b)
        cov /= n - 1
        s, u = torch.linalg.eigh(cov)
        s = s.clamp_min(0)  # round-off can make the smallest eigenvalues slightly negative
        if self.eps == 0 and bool((s == 0).any()):
            raise ValueError("the covariance is singular: ZCA needs eps > 0 for these images")
        root = (s + self.eps).sqrt()
        out = {"dtype": torch.float32, "device": images.device}
        self.mean = mean.to(**out)
        self.matrix = ((u / root) @ u.T).to(**out)
        self.inverse_matrix = ((u * root) @ u.T).to(**out)
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
            backend: ``None`` / ``"auto"`` (``MTT_FAST_BACKEND``, then the best available;
                float64 input always takes the torch path), ``"torch"`` (plain torch
                here), ``"native"`` or ``"triton"`` (the kernels of :mod:`mtt_fast.ops.zca`
                via its ``zca_apply``; a ``ValueError`` listing what exists when absent).

        Returns:
            ``(N, C, H, W)`` whitened, float32 for uint8 input, else the dtype of ``x``.
        """
        x = self._check(x, "transform")
        choice = None if backend is None else str(backend).lower()
        # float64 stays on the exact torch path unless a kernel is asked for by name
        implicit_torch = choice in (None, "auto") and x.dtype == torch.float64
        if choice not in ("torch", "reference") and not implicit_torch:
            try:
                from mtt_fast.ops.zca import zca_apply
            except ImportError:
                zca_apply = None
            if zca_apply is None:
                if choice not in (None, "auto"):
                    raise ValueError(
                        f"backend {backend!r} is not available for ZCA (mtt_fast.ops.zca.zca_apply "
                        f"cannot be imported); available: torch"
                    )
            elif backends.resolve("zca", choice, x.device) != "torch":
                out = zca_apply(x, self.mean.to(x.device), self.matrix.to(x.device), backend=choice)
                return out if x.dtype == torch.uint8 else out.to(x.dtype)
        backends.last_used["zca"] = "torch"
        return zca_reference(x, self.mean, self.matrix)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`transform`: ``x @ T^-1 + mean`` for ``x (N, C, H, W)``.

        Returns:
            ``(N, C, H, W)`` in [0, 1] units (not clamped), dtype as :meth:`transform`.
        """
        x = _as_float(self._check(x, "inverse"))
        flat = x.reshape(x.shape[0], -1)
        out = flat @ self.inverse_matrix.to(flat) + self.mean.to(flat)
        return out.reshape(x.shape)

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
