"""Datasets and preprocessing: readers for the original files (torchvision's layout, no
torchvision), mean/std normalisation and ZCA whitening, and :func:`prepare` that does both
splits as the original MTT code.

Example:
    >>> ds = load_dataset("mnist", root="../shared/data", split="train")
    >>> ds.images.shape, ds.labels.shape          # (60000, 1, 28, 28) uint8, (60000,) int64
    >>> zca = ZCA(eps=0.1).fit(images); white = zca.transform(images)
    >>> data = prepare("cifar10", root="data", zca=True, device="cuda")
"""

from __future__ import annotations

from mtt_fast.data.datasets import (
    KNOWN_DATASETS,
    MEAN_STD,
    ImageDataset,
    canonical_name,
    channel_stats,
    from_arrays,
    load_dataset,
)
from mtt_fast.data.prepare import Prepared, normalize, prepare
from mtt_fast.data.zca import ZCA

__all__ = [
    "KNOWN_DATASETS",
    "MEAN_STD",
    "ImageDataset",
    "Prepared",
    "ZCA",
    "canonical_name",
    "channel_stats",
    "from_arrays",
    "load_dataset",
    "normalize",
    "prepare",
]
