"""The dataset registry: one entry per dataset, the one place that knows a dataset's identity.

Each entry (:class:`DatasetInfo`) holds the canonical name, the accepted spellings (the
original MTT code's ``"CIFAR10"``, ``"Tiny"``, ... included), the image shape and class
count, the normalisation constants, the reader of its files, the folder layout it expects
under ``root`` and whether ZCA whitening is customary for it.

Names are matched case-insensitively and ignoring ``-``, ``_`` and spaces, so
``"CIFAR-10"``, ``"cifar_10"`` and ``"CIFAR10"`` are all ``"cifar10"``.

Example:
    >>> from mtt_fast.data import registry
    >>> registry.canonical("Tiny")
    'tinyimagenet'
    >>> registry.info("CIFAR10").im_size
    (32, 32)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mtt_fast.data import readers

__all__ = ["DatasetInfo", "canonical", "info", "names", "entries"]

Reader = Callable[[Path | None, str], readers.Arrays]

# The original MTT code's constants (utils.get_dataset).
_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class DatasetInfo:
    """What the package knows about one dataset.

    Attributes:
        name: canonical name, e.g. ``"cifar10"``.
        aliases: other accepted spellings (the original code's names among them).
        channels: image channels C; ``None`` when it depends on the files (imagefolder, npz).
        num_classes: class count K; ``None`` when it depends on the files.
        im_size: ``(H, W)``; ``None`` when it depends on the files.
        mean: per-channel mean in [0, 1] units used for normalisation; ``None``: computed
            from the train split when loading.
        std: per-channel standard deviation, same conventions as ``mean``.
        reader: ``reader(root, split) -> (images (N, C, H, W) uint8, labels (N,) int64,
            classes)``; ``root`` is ``None`` only for datasets that need no files.
        files: what ``root`` must hold (torchvision's layout), for messages and docs;
            empty when the dataset needs no files.
        zca: whether the original work whitens this dataset with ZCA (CIFAR-10/100).
        splits: the split names the reader accepts.
    """

    name: str
    aliases: tuple[str, ...]
    channels: int | None
    num_classes: int | None
    im_size: tuple[int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    reader: Reader = field(compare=False, repr=False)
    files: str = ""
    zca: bool = False
    splits: tuple[str, ...] = ("train", "test")

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"dataset {self.name!r}: give both mean and std, or neither")
        if self.mean is not None and self.channels is not None:
            if len(self.mean) != self.channels or len(self.std) != self.channels:
                raise ValueError(
                    f"dataset {self.name!r}: mean {self.mean} / std {self.std} need "
                    f"{self.channels} values"
                )

    @property
    def needs_root(self) -> bool:
        """Whether loading needs a ``root`` (every dataset but scikit-learn's digits)."""
        return bool(self.files)

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` of one image, or ``None`` when it depends on the files."""
        if self.channels is None or self.im_size is None:
            return None
        return (self.channels, *self.im_size)


def _image_folder(root: Path | None, split: str) -> readers.Arrays:
    return readers.read_image_folder(readers.image_folder_split(root, split))


def _digits(root: Path | None, split: str) -> readers.Arrays:
    return readers.read_digits(split)


_MNIST_FILES = "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"

_ENTRIES: tuple[DatasetInfo, ...] = (
    DatasetInfo(
        "mnist", ("MNIST",), 1, 10, (28, 28), (0.1307,), (0.3081,),
        lambda root, split: readers.read_mnist(root, split, "MNIST"),
        files=f"MNIST/raw/{_MNIST_FILES}",
    ),
    DatasetInfo(
        "fashionmnist", ("FashionMNIST", "fashion-mnist", "fashion_mnist"), 1, 10, (28, 28),
        (0.2861,), (0.3530,),
        lambda root, split: readers.read_mnist(root, split, "FashionMNIST"),
        files=f"FashionMNIST/raw/{_MNIST_FILES}",
    ),
    DatasetInfo(
        "cifar10", ("CIFAR10", "cifar-10"), 3, 10, (32, 32), _CIFAR10_MEAN, _CIFAR10_STD,
        readers.read_cifar10,
        files="cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}", zca=True,
    ),
    # The original normalises CIFAR-100 with CIFAR-10's constants (utils.get_dataset), so
    # its buffers expect that input scale; kept for fidelity (CIFAR-100's own statistics
    # would be (0.5071, 0.4866, 0.4409) / (0.2673, 0.2564, 0.2762)).
    DatasetInfo(
        "cifar100", ("CIFAR100", "cifar-100"), 3, 100, (32, 32), _CIFAR10_MEAN, _CIFAR10_STD,
        readers.read_cifar100,
        files="cifar-100-python/{train, test, meta}", zca=True,
    ),
    DatasetInfo(
        "svhn", ("SVHN",), 3, 10, (32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
        readers.read_svhn,
        files="{train,test,extra}_32x32.mat", splits=("train", "test", "extra"),
    ),
    DatasetInfo(
        "tinyimagenet", ("Tiny", "tiny-imagenet", "tiny_imagenet", "tiny-imagenet-200"),
        3, 200, (64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
        readers.read_tiny_imagenet,
        files="tiny-imagenet-200/{wnids.txt, train/<wnid>/images/, val/images/, "
        "val/val_annotations.txt}",
    ),
    DatasetInfo(
        "imagefolder", ("image-folder", "image_folder", "ImageFolder"), None, None, None,
        None, None, _image_folder,
        files="<class>/<images> or {train,test}/<class>/<images>",
    ),
    DatasetInfo("digits", ("sklearn-digits",), 1, 10, (8, 8), None, None, _digits),
    # the project's slice of CIFAR-10 (rows of data_batch_1 and test_batch)
    DatasetInfo(
        "cifar10-subset", ("cifar10_subset",), 3, 10, (32, 32), _CIFAR10_MEAN, _CIFAR10_STD,
        readers.read_cifar10_subset,
        files="cifar10-subset/{cifar10_subset.npz, batches.meta}", zca=True,
    ),
    DatasetInfo(
        "npz", (), None, None, None, None, None,
        lambda root, split: readers.read_npz(root, split),
        files="the .npz file itself (keys x_train / y_train, x_test / y_test, ...)",
    ),
)  # fmt: skip


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).strip().lower() if ch not in "-_ ")


_BY_NAME: dict[str, DatasetInfo] = {e.name: e for e in _ENTRIES}
_LOOKUP: dict[str, str] = {}
for _e in _ENTRIES:
    for _spelling in (_e.name, *_e.aliases):
        _k = _key(_spelling)
        if _LOOKUP.get(_k, _e.name) != _e.name:  # a table error, caught at import
            raise RuntimeError(f"dataset spelling {_spelling!r} names two datasets")
        _LOOKUP[_k] = _e.name
del _e, _spelling, _k


def names() -> tuple[str, ...]:
    """The canonical names of every known dataset, in registry order."""
    return tuple(_BY_NAME)


def entries() -> tuple[DatasetInfo, ...]:
    """Every :class:`DatasetInfo`, in registry order."""
    return _ENTRIES


def canonical(name: str) -> str:
    """The canonical name of a dataset.

    Args:
        name: any accepted spelling: any case, with or without ``-`` / ``_`` / spaces,
            the original code's names (``"CIFAR10"``, ``"Tiny"``, ``"FashionMNIST"``).

    Returns:
        One of :func:`names`.

    Raises:
        ValueError: an unknown name; the one-line message lists the known ones.
    """
    found = _LOOKUP.get(_key(name))
    if found is None:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}")
    return found


def info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset (any spelling :func:`canonical` accepts).

    Raises:
        ValueError: an unknown name (lists the known ones).
    """
    return _BY_NAME[canonical(name)]
