"""Preprocessing as the original MTT code does it: mean/std normalisation, or [0, 1] + ZCA."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mtt_fast.data.datasets import ImageDataset, load_dataset
from mtt_fast.data.zca import ZCA


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    return images


def _channel_view(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(tuple(values), dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images - mean[c]) / std[c]`` per channel.

    Args:
        images: ``(N, C, H, W)`` float in [0, 1], or uint8 (scaled by 1/255 first).
        mean: ``C`` values. std: ``C`` positive values.

    Returns:
        ``(N, C, H, W)`` float (float32 for uint8 input).
    """
    if images.ndim != 4:
        raise ValueError(
            f"normalize expects images of shape (N, C, H, W), got {tuple(images.shape)}"
        )
    c = images.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(
            f"normalize: {c} channels but mean has {len(mean)} and std {len(std)} values"
        )
    if any(float(s) <= 0 for s in std):
        raise ValueError(f"normalize: std must be positive, got {tuple(std)}")
    x = _to_unit(images)
    return (x - _channel_view(mean, x)) / _channel_view(std, x)


@dataclass(frozen=True)
class Prepared:
    """A dataset preprocessed for training, as the original MTT code does.

    Attributes:
        name: canonical dataset name.
        train_images: ``(N, C, H, W)`` float32: ``(x - mean) / std`` with x in [0, 1], or
            when ``zca_flag`` x in [0, 1] ZCA-whitened (no mean/std step).
        train_labels: ``(N,)`` int64.
        test_images: ``(M, C, H, W)`` float32, same processing (ZCA fitted on train).
        test_labels: ``(M,)`` int64.
        classes: class names.
        mean, std: the dataset's per-channel constants (used only when ``zca_flag`` is False).
        zca: the fitted :class:`ZCA`, or None.
        zca_flag: whether ZCA was applied.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    zca: ZCA | None = None
    zca_flag: bool = False

    def __post_init__(self) -> None:
        if self.zca_flag != (self.zca is not None):
            raise ValueError(f"zca_flag={self.zca_flag} but zca is {self.zca!r}")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"train images {tuple(self.train_images.shape)} and test images "
                f"{tuple(self.test_images.shape)} differ in (C, H, W)"
            )

    @property
    def channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def im_size(self) -> tuple[int, int]:
        return (self.train_images.shape[2], self.train_images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Map processed images back to [0, 1] for pictures (inverse ZCA, or ``x*std + mean``),
        clamped.

        Args:
            x: ``(N, C, H, W)`` or ``(C, H, W)`` processed images, any device.

        Returns:
            Same shape, float, detached, in [0, 1].
        """
        x = x.detach()
        single = x.ndim == 3
        if single:
            x = x.unsqueeze(0)
        if self.zca is not None:
            out = self.zca.inverse(x)
        else:
            out = x * _channel_view(self.std, x) + _channel_view(self.mean, x)
        out = out.clamp(0.0, 1.0)
        return out[0] if single else out


def _process(ds: ImageDataset, device: torch.device, zca: ZCA | None, backend) -> torch.Tensor:
    x = ds.images.to(device)
    if zca is not None:
        return zca.transform(x, backend=backend).to(torch.float32)  # uint8 -> [0, 1] inside
    return normalize(x, ds.mean, ds.std).to(torch.float32)


def prepare(
    name: str,
    root: str | Path | None = None,
    zca: bool = False,
    device: torch.device | str = "cpu",
    zca_backend: str | None = None,
    zca_eps: float = 0.1,
) -> Prepared:
    """Load train and test splits and preprocess them as the original MTT code.

    ``zca=False``: pixels scaled to [0, 1], then normalised by the dataset's mean/std.
    ``zca=True``: pixels scaled to [0, 1] (no mean/std), then whitened by a :class:`ZCA`
    (``eps = zca_eps``, kornia's ``ZCAWhitening``) fitted on the train split and applied to
    both splits.

    Args:
        name: dataset name (see :func:`mtt_fast.data.load_dataset`).
        root: data folder or file, as for :func:`~mtt_fast.data.load_dataset`.
        zca: whiten with ZCA instead of mean/std normalisation.
        device: where the processed tensors (and the fitted ZCA) live; the fit runs there.
        zca_backend: ``backend`` passed to :meth:`ZCA.transform`.
        zca_eps: the ZCA regulariser (0.1 as in the original).

    Returns:
        :class:`Prepared` with float32 ``train_images (N, C, H, W)``, ``test_images
        (M, C, H, W)`` and int64 labels on ``device``.
    """
    device = torch.device(device)
    train = load_dataset(name, root, "train")
    test = load_dataset(name, root, "test")
    whitener = None
    if zca:
        whitener = ZCA(eps=zca_eps).fit(train.images.to(device))  # uint8: scaled per block
    return Prepared(
        name=train.name,
        train_images=_process(train, device, whitener, zca_backend),
        train_labels=train.labels.to(device),
        test_images=_process(test, device, whitener, zca_backend),
        test_labels=test.labels.to(device),
        classes=list(train.classes),
        mean=train.mean,
        std=train.std,
        zca=whitener,
        zca_flag=bool(zca),
    )
