"""Datasets and preprocessing: the dataset registry (:mod:`mtt_fast.data.registry`: names,
shapes, constants, readers), readers for the original files (torchvision's layout, no
torchvision), mean/std normalisation and ZCA whitening, and :func:`prepare` that does both
splits as the original MTT code.

Example:
    >>> dataset_info("CIFAR10").im_size, registry.canonical("Tiny")   # (32, 32), 'tinyimagenet'
    >>> ds = load_dataset("mnist", root="../shared/data", split="train")
    >>> ds.images.shape, ds.labels.shape          # (60000, 1, 28, 28) uint8, (60000,) int64
    >>> zca = ZCA(eps=0.1).fit(images); white = zca.transform(images)
    >>> data = prepare("cifar10", root="data", zca=True, device="cuda")
"""

from __future__ import annotations

from mtt_fast.data import registry
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
from mtt_fast.data.registry import DatasetInfo
from mtt_fast.data.zca import ZCA

dataset_info = registry.info

__all__ = [
    "DatasetInfo",
    "KNOWN_DATASETS",
    "MEAN_STD",
    "ImageDataset",
    "Prepared",
    "ZCA",
    "canonical_name",
    "channel_stats",
    "dataset_info",
    "from_arrays",
    "load_dataset",
    "normalize",
    "prepare",
    "registry",
]
