"""normalize and prepare: the original MTT preprocessing (mean/std, or [0, 1] + ZCA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtt_fast.data import ZCA, Prepared, load_dataset, normalize, prepare


def test_normalize():
    x8 = torch.randint(0, 256, (3, 2, 4, 4), dtype=torch.uint8)
    out = normalize(x8, (0.5, 0.25), (0.2, 0.1))
    want = (x8.float() / 255 - torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)) / torch.tensor(
        [0.2, 0.1]
    ).view(1, 2, 1, 1)
    torch.testing.assert_close(out, want)
    out64 = normalize(x8.double() / 255, (0.5, 0.25), (0.2, 0.1))
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), want)
    with pytest.raises(ValueError, match="2 channels but mean has 1"):
        normalize(x8, (0.5,), (0.2,))
    with pytest.raises(ValueError, match="std must be positive"):
        normalize(x8, (0.5, 0.5), (0.2, 0.0))


def test_prepare_mean_std_digits():
    p = prepare("digits")
    tr, te = load_dataset("digits"), load_dataset("digits", split="test")
    assert isinstance(p, Prepared) and p.name == "digits" and not p.zca_flag and p.zca is None
    assert (
        p.channels == 1 and p.im_size == (8, 8) and p.num_classes == 10 and p.classes == tr.classes
    )
    assert p.train_images.dtype == torch.float32 and p.train_images.shape == (len(tr), 1, 8, 8)
    m, s = tr.mean[0], tr.std[0]
    torch.testing.assert_close(p.train_images, (tr.images.float() / 255 - m) / s)
    torch.testing.assert_close(p.test_images, (te.images.float() / 255 - m) / s)
    assert torch.equal(p.train_labels, tr.labels) and torch.equal(p.test_labels, te.labels)
    assert abs(p.train_images.mean().item()) < 1e-4 and abs(p.train_images.std().item() - 1) < 1e-3
    torch.testing.assert_close(
        p.to_pixels(p.test_images), te.images.float() / 255, atol=1e-6, rtol=0
    )
    assert p.to_pixels(p.test_images[0]).shape == (1, 8, 8)
    assert p.to_pixels(p.test_images * 100).max() <= 1  # clamped


def test_prepare_zca_npz(tmp_path):
    rng = np.random.default_rng(3)
    f = tmp_path / "toy.npz"
    np.savez(f, x_train=rng.integers(0, 256, (60, 3, 4, 4), dtype=np.uint8), y_train=rng.integers(0, 3, 60),
             x_test=rng.integers(0, 256, (9, 3, 4, 4), dtype=np.uint8), y_test=rng.integers(0, 3, 9))  # fmt: skip
    p = prepare("npz", root=f, zca=True, zca_backend="torch")
    tr, te = load_dataset("npz", root=f), load_dataset("npz", root=f, split="test")
    assert p.zca_flag and isinstance(p.zca, ZCA) and p.zca.shape == (3, 4, 4)
    ref = ZCA(0.1).fit(tr.images.float() / 255)  # fitted on [0, 1] train pixels, no mean/std
    torch.testing.assert_close(p.zca.matrix, ref.matrix)
    torch.testing.assert_close(p.train_images, ref.transform(tr.images.float() / 255))
    torch.testing.assert_close(p.test_images, ref.transform(te.images.float() / 255))
    torch.testing.assert_close(
        p.to_pixels(p.test_images), te.images.float() / 255, atol=1e-4, rtol=0
    )
    assert p.mean == tr.mean and len(p.std) == 3
