"""``load_dataset``: one entry point over every reader, returning an :class:`ImageDataset`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtt_fast.data import readers, registry

# Views of the registry kept for code written against them (the registry is the source).
KNOWN_DATASETS: tuple[str, ...] = registry.names()
MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    e.name: (e.mean, e.std) for e in registry.entries() if e.mean is not None
}
canonical_name = registry.canonical  # the older name of registry.canonical

_SPLITS = {"train": "train", "test": "test", "val": "test"}


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image set in memory.

    Attributes:
        images: ``(N, C, H, W)`` uint8 (0..255) or float32 (in [0, 1]).
        labels: ``(N,)`` int64 class indices into ``classes``.
        classes: class names, ``len(classes) = K``.
        mean: per-channel mean, ``len = C``: the original MTT constant of the dataset, or
            computed from the train split (digits, imagefolder, npz, arrays), in [0, 1] units.
        std: per-channel standard deviation, same conventions.
        name: canonical dataset name.
        split: ``"train"`` or ``"test"`` (``"extra"`` for SVHN).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = "tensors"
    split: str = "train"

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(
                f"images must be an (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}"
            )
        if x.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be uint8 or float32, got {x.dtype}")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ValueError(
                f"labels must be an int64 tensor of shape ({x.shape[0]},), got "
                f"{getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}"
            )
        if len(self.mean) != x.shape[1] or len(self.std) != x.shape[1]:
            raise ValueError(
                f"mean {self.mean} and std {self.std} must have one value per channel ({x.shape[1]})"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            raise ValueError(
                f"labels span {int(y.min())}..{int(y.max())} but there are {len(self.classes)} classes"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def im_size(self) -> tuple[int, int]:
        return (self.images.shape[2], self.images.shape[3])


def channel_stats(images: np.ndarray | torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``images (N, C, H, W)`` in [0, 1] units.

    uint8 images are divided by 255. Accumulates in float64.
    """
    x = torch.as_tensor(images)
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    c = x.shape[1]
    mean = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    n = 0
    for i in range(0, x.shape[0], 4096):
        b = x[i : i + 4096].to(torch.float64).div_(scale).transpose(0, 1).reshape(c, -1)
        mean += b.sum(1)
        sq += (b * b).sum(1)
        n += b.shape[1]
    if n == 0:
        raise ValueError("cannot compute mean/std of an empty image set")
    mean /= n
    var = (sq / n - mean * mean).clamp_min(0)
    std = var.sqrt().clamp_min(1e-6)  # a constant channel must not divide by zero later
    return tuple(mean.tolist()), tuple(std.tolist())


def from_arrays(
    images,
    labels,
    classes: list[str] | None = None,
    name: str = "tensors",
    split: str = "train",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> ImageDataset:
    """Wrap user tensors or arrays in an :class:`ImageDataset`.

    Args:
        images: numpy array or tensor, ``(N, D)`` (``D = 3*s*s``: CIFAR row layout; ``D = s*s``:
            one channel), ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` with C in {1, 3};
            uint8 0..255 or float in [0, 1] (see :func:`mtt_fast.data.readers.to_nchw`).
        labels: ``(N,)`` integer class indices.
        classes: class names; default ``"0" .. str(max label)``.
        name: dataset name to record. split: split to record.
        mean, std: per-channel statistics; default computed from ``images``.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    x = readers.to_nchw(images)
    y = readers.to_labels(labels, len(x))
    if classes is None:
        classes = [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
    if mean is None or std is None:
        m, s = channel_stats(x)
        mean, std = mean or m, std or s
    return ImageDataset(torch.from_numpy(x), torch.from_numpy(y), list(classes),
                        tuple(mean), tuple(std), name, split)  # fmt: skip


def _stats_from_train(
    entry: registry.DatasetInfo, root: Path | None, split: str, images: np.ndarray
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if split != "train":
        try:
            images = entry.reader(root, "train")[0]
        except (FileNotFoundError, ValueError):
            pass  # no train split beside this one: use this split's own statistics
    return channel_stats(images)


def load_dataset(name: str, root: str | Path | None = None, split: str = "train") -> ImageDataset:
    """Load one split of a dataset from its original files.

    Layouts under ``root`` (torchvision's; :attr:`DatasetInfo.files` of each entry of
    :mod:`mtt_fast.data.registry`):

    * ``mnist``: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
    * ``fashionmnist``: the same under ``FashionMNIST/raw/``
    * ``cifar10``: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
    * ``cifar100``: ``cifar-100-python/{train, test, meta}`` (fine labels)
    * ``svhn``: ``{train,test,extra}_32x32.mat`` (needs scipy)
    * ``tinyimagenet``: ``tiny-imagenet-200/`` (train, val = the test split, wnids.txt)
    * ``imagefolder``: ``root/<class>/<images>``, or ``root/{train,test}/<class>/<images>``
    * ``cifar10-subset``: ``cifar10-subset/{cifar10_subset.npz, batches.meta}``
    * ``npz``: ``root`` is the .npz file (see :func:`mtt_fast.data.readers.read_npz`)
    * ``digits``: scikit-learn's bundled 8x8 digits; no root; 80/20 stratified split.

    Args:
        name: a dataset of :mod:`mtt_fast.data.registry` (any case; original MTT names and
            aliases such as ``"CIFAR10"``, ``"Tiny"``, ``"fashion-mnist"`` work).
        root: the data folder (the .npz file for ``npz``). Required for every dataset but
            ``digits``; there is no default location.
        split: ``"train"`` or ``"test"`` (``"val"`` = ``"test"``; SVHN also ``"extra"``).

    Returns:
        :class:`ImageDataset` with ``images (N, C, H, W)`` uint8 (float32 only for float
        npz data), ``labels (N,)`` int64, classes, and mean/std: the registry's constants
        (the original MTT ones), or (digits, imagefolder, npz) computed from the train split.

    Raises:
        ValueError: unknown name (lists the known ones), unknown split, no ``root`` for a
            dataset that needs files (names the layout expected), corrupt file.
        FileNotFoundError: a missing file or folder, naming the path expected.
    """
    entry = registry.info(name)
    key = entry.name
    s = str(split).lower()
    s = _SPLITS.get(s, s)
    if s not in entry.splits:
        raise ValueError(
            f"unknown split {split!r} for {key!r}; choose {', '.join(entry.splits)} (or val)"
        )
    if root is None and entry.needs_root:
        raise ValueError(
            f"load_dataset({key!r}) needs root=: the data folder holding {entry.files}"
            if key != "npz"
            else f"load_dataset({key!r}) needs root=: {entry.files}"
        )
    root_p = Path(root).expanduser() if root is not None else None
    images, labels, classes = entry.reader(root_p, s)
    if entry.mean is not None:
        mean, std = entry.mean, entry.std
    else:
        mean, std = _stats_from_train(entry, root_p, s, images)
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), list(classes),
                        tuple(mean), tuple(std), key, s)  # fmt: skip
