"""The dataset registry: names and aliases, shapes, constants, and load_dataset using it."""

from __future__ import annotations

import numpy as np
import pytest

import mtt_fast
from mtt_fast.data import DatasetInfo, dataset_info, load_dataset, registry
from mtt_fast.data.datasets import KNOWN_DATASETS, MEAN_STD, canonical_name


@pytest.mark.parametrize(
    "spelling,name",
    [("CIFAR10", "cifar10"), ("cifar-10", "cifar10"), ("Cifar_10", "cifar10"),
     ("CIFAR100", "cifar100"), ("Tiny", "tinyimagenet"), ("tiny-imagenet-200", "tinyimagenet"),
     ("FashionMNIST", "fashionmnist"), ("fashion-mnist", "fashionmnist"), ("MNIST", "mnist"),
     ("SVHN", "svhn"), ("cifar10_subset", "cifar10-subset"), (" digits ", "digits"),
     ("ImageFolder", "imagefolder")],
)  # fmt: skip
def test_canonical_spellings(spelling, name):
    assert registry.canonical(spelling) == name
    assert dataset_info(spelling).name == name


def test_unknown_name_is_one_line_listing_the_known():
    with pytest.raises(ValueError) as e:
        registry.canonical("imagenet-1k")
    msg = str(e.value)
    assert "'imagenet-1k'" in msg and "\n" not in msg
    assert all(n in msg for n in registry.names())
    with pytest.raises(ValueError, match="known datasets"):
        dataset_info("cifar1000")


def test_entries_and_the_views_kept_for_older_code():
    assert registry.names() == KNOWN_DATASETS and len(set(KNOWN_DATASETS)) == len(KNOWN_DATASETS)
    assert all(isinstance(e, DatasetInfo) for e in registry.entries())
    assert canonical_name is registry.canonical and mtt_fast.data.registry is registry
    shapes = {e.name: (e.channels, e.num_classes, e.im_size) for e in registry.entries()}
    assert shapes["mnist"] == shapes["fashionmnist"] == (1, 10, (28, 28))
    assert shapes["cifar10"] == shapes["cifar10-subset"] == shapes["svhn"] == (3, 10, (32, 32))
    assert shapes["cifar100"] == (3, 100, (32, 32)) and shapes["digits"] == (1, 10, (8, 8))
    assert shapes["tinyimagenet"] == (3, 200, (64, 64))
    assert dataset_info("Tiny").shape == (3, 64, 64)
    assert shapes["imagefolder"] == shapes["npz"] == (None, None, None)
    # CIFAR-100 keeps CIFAR-10's constants, as the original does
    c10, c100 = dataset_info("cifar10"), dataset_info("cifar100")
    assert (c100.mean, c100.std) == (c10.mean, c10.std) == MEAN_STD["cifar100"]
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c10.std == (0.2023, 0.1994, 0.2010)
    assert dataset_info("mnist").mean == (0.1307,) and dataset_info("digits").mean is None
    assert "digits" not in MEAN_STD
    zca = {e.name for e in registry.entries() if e.zca}
    assert zca == {"cifar10", "cifar100", "cifar10-subset"}
    assert not dataset_info("digits").needs_root and dataset_info("npz").needs_root
    assert dataset_info("svhn").splits == ("train", "test", "extra")
    with pytest.raises(AttributeError):
        dataset_info("mnist").channels = 3  # frozen


def test_info_validates():
    with pytest.raises(ValueError, match="need 3 values"):
        DatasetInfo("x", (), 3, 10, (4, 4), (0.5,), (0.2,), lambda r, s: None)
    with pytest.raises(ValueError, match="both mean and std"):
        DatasetInfo("x", (), 3, 10, (4, 4), (0.5,) * 3, None, lambda r, s: None)


def test_load_dataset_follows_the_registry(tmp_path):
    ds = load_dataset("digits", split="val")
    e = dataset_info("digits")
    assert ds.name == "digits" and ds.split == "test"
    assert (ds.channels, ds.num_classes, ds.im_size) == (e.channels, e.num_classes, e.im_size)
    with pytest.raises(ValueError, match=r"unknown split 'extra' for 'digits'; choose train, test"):
        load_dataset("digits", split="extra")
    f = tmp_path / "d.npz"
    np.savez(f, x=np.zeros((2, 1, 3, 3), np.uint8), y=np.array([0, 1]))
    assert load_dataset("NPZ", root=f).im_size == (3, 3)
