"""``load_dataset``: one entry point over every reader, returning an :class:`ImageDataset`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtt_fast.data import readers

KNOWN_DATASETS: tuple[str, ...] = (
    "mnist",
    "fashionmnist",
    "cifar10",
    "cifar100",
    "svhn",
    "tinyimagenet",
    "imagefolder",
    "digits",
    "cifar10-subset",
    "npz",
)

# The original MTT code's normalisation constants (utils.get_dataset).
MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2861,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar10-subset": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # The original normalises CIFAR-100 with CIFAR-10's constants (utils.get_dataset), so
    # its buffers expect that input scale; kept for fidelity (CIFAR-100's own statistics
    # would be (0.5071, 0.4866, 0.4409) / (0.2673, 0.2564, 0.2762)).
    "cifar100": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_ALIASES = {
    "fashion-mnist": "fashionmnist",
    "fashion_mnist": "fashionmnist",
    "tiny": "tinyimagenet",
    "tiny-imagenet": "tinyimagenet",
    "tiny_imagenet": "tinyimagenet",
    "tiny-imagenet-200": "tinyimagenet",
    "cifar10_subset": "cifar10-subset",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "image-folder": "imagefolder",
    "image_folder": "imagefolder",
}

_SPLITS = {"train": "train", "test": "test", "val": "test"}
_DEFAULT_ROOT_DATASETS = ("mnist", "cifar10-subset")


def canonical_name(name: str) -> str:
    """Map a dataset name (any case; original MTT names such as ``"CIFAR10"``, ``"Tiny"``
    and aliases such as ``"fashion-mnist"``) to one of :data:`KNOWN_DATASETS`.

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
    return key


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


def _default_root(name: str) -> Path:
    p = Path.cwd() / ".." / "shared" / "data"
    if p.is_dir():
        return p.resolve()
    raise FileNotFoundError(
        f"load_dataset({name!r}) was given no root and the default {p.resolve()} "
        f"(../shared/data relative to the current folder) does not exist; pass root="
    )


def _image_folder_split(root: Path, split: str) -> Path:
    """``<root>/<split>`` when it exists (``val`` also serves ``test``); for ``train``
    without such a folder, ``<root>`` itself."""
    names = ["train"] if split == "train" else ["test", "val"]
    for n in names:
        if (root / n).is_dir():
            return root / n
    if split == "train":
        return root
    raise FileNotFoundError(
        f"image folder: no test split: expected the folder {root / 'test'} (or {root / 'val'})"
    )


def _read(name: str, root: Path | None, split: str) -> readers.Arrays:
    table: dict[str, Callable[[], readers.Arrays]] = {
        "mnist": lambda: readers.read_mnist(root, split, "MNIST"),
        "fashionmnist": lambda: readers.read_mnist(root, split, "FashionMNIST"),
        "cifar10": lambda: readers.read_cifar10(root, split),
        "cifar100": lambda: readers.read_cifar100(root, split),
        "cifar10-subset": lambda: readers.read_cifar10_subset(root, split),
        "svhn": lambda: readers.read_svhn(root, split),
        "tinyimagenet": lambda: readers.read_tiny_imagenet(root, split),
        "imagefolder": lambda: readers.read_image_folder(_image_folder_split(root, split)),
        "npz": lambda: readers.read_npz(root, split),
        "digits": lambda: readers.read_digits(split),
    }
    return table[name]()


def _stats_from_train(name: str, root: Path | None, split: str, images: np.ndarray):
    if split != "train":
        try:
            images = _read(name, root, "train")[0]
        except (FileNotFoundError, ValueError):
            pass  # no train split beside this one: use this split's own statistics
    return channel_stats(images)


def load_dataset(name: str, root: str | Path | None = None, split: str = "train") -> ImageDataset:
    """Load one split of a dataset from its original files.

    Layouts under ``root`` (torchvision's):

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
        name: one of :data:`KNOWN_DATASETS` (case-insensitive; original MTT names and
            aliases such as ``"CIFAR10"``, ``"Tiny"``, ``"fashion-mnist"`` work).
        root: data folder. Default for ``mnist`` and ``cifar10-subset``: ``../shared/data``
            relative to the current folder, when it exists.
        split: ``"train"`` or ``"test"`` (``"val"`` = ``"test"``; SVHN also ``"extra"``).

    Returns:
        :class:`ImageDataset` with ``images (N, C, H, W)`` uint8 (float32 only for float
        npz data), ``labels (N,)`` int64, classes, and mean/std: the original MTT constants,
        or (digits, imagefolder, npz) computed from the train split.

    Raises:
        ValueError: unknown name (lists the known ones), unknown split, corrupt file.
        FileNotFoundError: a missing file or folder, naming the path expected.
    """
    key = canonical_name(name)
    s = str(split).lower()
    if s in _SPLITS:
        s = _SPLITS[s]
    elif not (key == "svhn" and s == "extra"):
        extra = ", extra" if key == "svhn" else ""
        raise ValueError(f"unknown split {split!r} for {key!r}; choose train, test (or val){extra}")
    if root is None:
        if key in _DEFAULT_ROOT_DATASETS:
            root_p: Path | None = _default_root(key)
        elif key == "digits":
            root_p = None
        else:
            what = "the .npz file" if key == "npz" else "the data folder"
            raise ValueError(f"load_dataset({key!r}) needs root=: {what}")
    else:
        root_p = Path(root).expanduser()
    images, labels, classes = _read(key, root_p, s)
    if key in MEAN_STD:
        mean, std = MEAN_STD[key]
    else:
        mean, std = _stats_from_train(key, root_p, s, images)
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), list(classes),
                        tuple(mean), tuple(std), key, s)  # fmt: skip
