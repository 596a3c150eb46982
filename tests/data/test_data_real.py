"""Real data from ../shared/data (the ``data_root`` fixture): MNIST label counts, the
cifar10-subset slice."""

from __future__ import annotations

import pytest
import torch

from mtt_fast.data import load_dataset, prepare

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("split,counts", [("train", TRAIN_COUNTS), ("test", TEST_COUNTS)])
def test_real_mnist(split, counts, data_root):
    if not (data_root / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST folder {data_root / 'MNIST' / 'raw'} is absent")
    ds = load_dataset("MNIST", root=data_root, split=split)
    assert ds.images.shape == (sum(counts), 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels, minlength=10).tolist() == counts
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    if split == "train":  # the published MNIST statistics hold for these pixels
        x = ds.images.double() / 255
        assert abs(x.mean().item() - 0.1307) < 1e-4 and abs(x.std().item() - 0.3081) < 1e-4


def test_real_cifar10_subset(data_root):
    if not (data_root / "cifar10-subset" / "cifar10_subset.npz").is_file():
        pytest.skip(f"{data_root / 'cifar10-subset'} is absent")
    tr = load_dataset("cifar10-subset", root=data_root)
    te = load_dataset("cifar10_subset", root=str(data_root), split="test")
    assert tr.images.shape == (4000, 3, 32, 32) and te.images.shape == (1000, 3, 32, 32)
    assert tr.classes[0] == "airplane" and tr.classes[-1] == "truck"
    counts = torch.bincount(tr.labels, minlength=10)
    assert counts.min() >= 366 and counts.max() <= 422 and counts.sum() == 4000


def test_real_data_needs_its_root(data_root, tmp_path, monkeypatch):
    # no folder is assumed: not even ../shared/data seen from a project folder
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data_root, target_is_directory=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    for name in ("mnist", "cifar10-subset"):
        with pytest.raises(ValueError, match=rf"load_dataset\('{name}'\) needs root="):
            load_dataset(name, split="test")
        with pytest.raises(ValueError, match="needs root="):
            prepare(name)
