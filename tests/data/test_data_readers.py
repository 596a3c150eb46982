"""Readers: small files written in each original format, read back exactly; error paths."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtt_fast.data import KNOWN_DATASETS, ImageDataset, from_arrays, load_dataset
from mtt_fast.data.datasets import MEAN_STD, canonical_name
from mtt_fast.data.readers import read_idx, to_nchw

RNG = np.random.default_rng(0)


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# ----------------------------------------------------------------------------- idx / MNIST


def _idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_mnist(root: Path, folder: str, n_train: int, n_test: int, gz: bool) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = _u8(n, 28, 28), RNG.integers(0, 10, n).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            data = _idx_bytes(arr)
            if gz:
                (raw / (stem + ".gz")).write_bytes(gzip.compress(data))
            else:
                (raw / stem).write_bytes(data)
        out[prefix] = (x, y)
    return out


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("FashionMNIST", "FashionMNIST")])
def test_mnist_family_roundtrip(tmp_path, gz, name, folder):
    ref = _write_mnist(tmp_path, folder, 7, 3, gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset(name, root=tmp_path, split=split)
        x, y = ref[prefix]
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(x), 1, 28, 28)
        assert np.array_equal(ds.images[:, 0].numpy(), x)
        assert ds.labels.dtype == torch.int64 and np.array_equal(ds.labels.numpy(), y)
    key = canonical_name(name)
    assert (ds.mean, ds.std) == MEAN_STD[key]
    assert len(ds.classes) == 10 and (ds.classes[0] == "T-shirt/top") == (folder == "FashionMNIST")


def test_idx_errors(tmp_path):
    good = _idx_bytes(_u8(4, 5, 6))
    p = tmp_path / "a-ubyte"
    p.write_bytes(good[:-7])
    with pytest.raises(ValueError, match=r"a-ubyte: truncated idx file.*\(4, 5, 6\)"):
        read_idx(p)
    p.write_bytes(good[:9])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)
    p.write_bytes(good + b"x")
    with pytest.raises(ValueError, match="trailing bytes"):
        read_idx(p)
    p.write_bytes(b"\x00\x01\x08\x03" + good[4:])
    with pytest.raises(ValueError, match=r"a-ubyte: not an idx file \(magic number 0x00010803"):
        read_idx(p)
    gzp = tmp_path / "b-ubyte.gz"
    gzp.write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(ValueError, match=r"b-ubyte.gz: corrupt or truncated gzip"):
        read_idx(gzp)
    assert read_idx(_write(tmp_path / "c-ubyte", good)).shape == (4, 5, 6)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_mnist_missing_and_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("mnist", root=tmp_path)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in str(e.value)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(_idx_bytes(_u8(3, 28, 28)))
    (raw / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(_u8(2) % 10))
    with pytest.raises(ValueError, match="3 images but .* 2 labels"):
        load_dataset("mnist", root=tmp_path)


# ----------------------------------------------------------------------------- CIFAR


def _pickle(path: Path, obj: dict, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def test_cifar10_roundtrip(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
             b"dog", b"frog", b"horse", b"ship", b"truck"]  # fmt: skip
    _pickle(base / "batches.meta", {b"label_names": names, b"num_vis": 3072}, protocol=2)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _u8(i + 1, 3072), RNG.integers(0, 10, i + 1).tolist()
        _pickle(base / f"data_batch_{i}", {b"batch_label": b"x", b"data": x, b"labels": y},
                protocol=2 if i % 2 else 5)  # fmt: skip
        xs.append(x)
        ys += y
    xt, yt = _u8(4, 3072), [0, 9, 3, 3]
    _pickle(base / "test_batch", {b"data": xt, b"labels": yt})

    ds = load_dataset("CIFAR10", root=tmp_path)
    x = np.concatenate(xs)
    assert ds.images.shape == (len(x), 3, 32, 32)
    assert np.array_equal(ds.images.numpy(), x.reshape(-1, 3, 32, 32))
    # CIFAR row layout: first 1024 values are the red plane, row-major
    assert ds.images[0, 1, 2, 5].item() == x[0, 1024 + 2 * 32 + 5]
    assert ds.labels.tolist() == ys and ds.classes[1] == "automobile"
    assert (ds.mean, ds.std) == MEAN_STD["cifar10"]
    te = load_dataset("cifar10", root=tmp_path, split="test")
    assert np.array_equal(te.images.numpy().reshape(4, -1), xt) and te.labels.tolist() == yt

    (base / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=str(base / "data_batch_3").replace("\\", "\\\\")):
        load_dataset("cifar10", root=tmp_path)
    (base / "data_batch_3").write_bytes(pickle.dumps({b"data": _u8(2, 3072), b"labels": [1]}))
    with pytest.raises(ValueError, match=r"data_batch_3: 2 images but 1 entries in 'labels'"):
        load_dataset("cifar10", root=tmp_path)
    (base / "data_batch_3").write_bytes(pickle.dumps({b"data": _u8(2, 3000), b"labels": [1, 2]}))
    with pytest.raises(ValueError, match=r"data_batch_3: 'data' must be an \(N, 3072\)"):
        load_dataset("cifar10", root=tmp_path)
    (base / "data_batch_3").write_bytes(
        pickle.dumps({b"data": _u8(2, 3072), b"labels": [1, 2]})[:50]
    )
    with pytest.raises(ValueError, match=r"data_batch_3: not a readable CIFAR pickle"):
        load_dataset("cifar10", root=tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_pickle_refuses_code(tmp_path, capsys):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    _pickle(base / "train", {b"data": _u8(2, 3072), b"fine_labels": [0, 1], b"x": _Evil()})
    _pickle(base / "meta", {b"fine_label_names": [b"a", b"b"]})
    with pytest.raises(ValueError, match="refusing to load the global builtins.print"):
        load_dataset("cifar100", root=tmp_path)
    assert "never run" not in capsys.readouterr().out


def test_cifar100_roundtrip(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    fine = [f"class{i}".encode() for i in range(100)]
    _pickle(base / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20})
    x, y = _u8(6, 3072), [99, 0, 5, 42, 42, 7]
    _pickle(base / "train", {b"data": x, b"fine_labels": y, b"coarse_labels": [0] * 6}, protocol=2)
    xt, yt = _u8(2, 3072), [1, 2]
    _pickle(base / "test", {b"data": xt, b"fine_labels": yt, b"coarse_labels": [3, 4]})
    ds = load_dataset("cifar100", root=tmp_path)
    assert np.array_equal(ds.images.numpy().reshape(6, -1), x) and ds.labels.tolist() == y
    assert ds.classes == [f"class{i}" for i in range(100)]
    assert (ds.mean, ds.std) == MEAN_STD["cifar100"] == MEAN_STD["cifar10"]  # as the original
    te = load_dataset("cifar100", root=tmp_path, split="test")
    assert np.array_equal(te.images.numpy().reshape(2, -1), xt) and te.labels.tolist() == yt
    _pickle(base / "test", {b"data": xt, b"labels": yt})
    with pytest.raises(ValueError, match=r"test: no 'fine_labels' entry"):
        load_dataset("cifar100", root=tmp_path, split="test")


# ----------------------------------------------------------------------------- SVHN


def test_svhn_roundtrip(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    x = _u8(32, 32, 3, 5)
    y = np.array([[10], [1], [9], [10], [5]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    ds = load_dataset("svhn", root=tmp_path)
    assert ds.images.shape == (5, 3, 32, 32) and ds.labels.tolist() == [0, 1, 9, 0, 5]
    for n in range(5):
        assert np.array_equal(ds.images[n].numpy(), x[:, :, :, n].transpose(2, 0, 1))
    assert (ds.mean, ds.std) == MEAN_STD["svhn"]
    with pytest.raises(
        FileNotFoundError, match=str(tmp_path / "test_32x32.mat").replace("\\", "\\\\")
    ):
        load_dataset("svhn", root=tmp_path, split="test")
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage" * 20)
    with pytest.raises(ValueError, match="test_32x32.mat: not a readable MATLAB file"):
        load_dataset("svhn", root=tmp_path, split="test")


# ----------------------------------------------------------------------------- image files


def _decoded(path: Path, mode: str = "RGB") -> np.ndarray:
    with Image.open(path) as im:
        a = np.asarray(im.convert(mode))
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def test_tiny_imagenet_roundtrip(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # file order; labels follow sorted order (ImageFolder's, the original's)
    (base).mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    train_files = []
    for w in wnids:
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        (base / "train" / w / f"{w}_boxes.txt").write_text("ignored")
        for i in range(2):
            p = d / f"{w}_{i}.JPEG"
            mode = "L" if (w, i) == ("n01", 1) else "RGB"  # Tiny ImageNet has grayscale JPEGs
            Image.fromarray(_u8(16, 16, 3) if mode == "RGB" else _u8(16, 16)).save(p)
            train_files.append(p)
    (base / "val" / "images").mkdir(parents=True)
    ann = []
    for i, w in enumerate(["n01", "n02", "n01"]):
        Image.fromarray(_u8(16, 16, 3)).save(base / "val" / "images" / f"val_{i}.JPEG")
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t15\t15")
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")

    ds = load_dataset("tiny", root=tmp_path)
    assert ds.classes == ["n01", "n02"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images.shape == (4, 3, 16, 16)
    train_files = train_files[2:] + train_files[:2]  # class n01 (label 0) first
    for n, p in enumerate(train_files):
        assert np.array_equal(ds.images[n].numpy(), _decoded(p))
    assert (ds.mean, ds.std) == MEAN_STD["tinyimagenet"]
    val = load_dataset("tinyimagenet", root=tmp_path, split="val")
    assert val.labels.tolist() == [0, 1, 0]
    assert np.array_equal(val.images[2].numpy(), _decoded(base / "val" / "images" / "val_2.JPEG"))

    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\n")
    with pytest.raises(ValueError, match=r"val_annotations.txt, line 1"):
        load_dataset("tinyimagenet", root=tmp_path, split="test")
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200"):
        load_dataset("tinyimagenet", root=tmp_path / "nowhere")


def test_image_folder(tmp_path):
    pics = {}
    for c in ("dog", "cat"):
        (tmp_path / "train" / c).mkdir(parents=True)
        (tmp_path / "test" / c).mkdir(parents=True)
        for i in range(2):
            a = _u8(6, 5, 3)
            Image.fromarray(a).save(tmp_path / "train" / c / f"{i}.png")
            pics[(c, i)] = a.transpose(2, 0, 1)
        Image.fromarray(_u8(6, 5, 3)).save(tmp_path / "test" / c / "x.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", root=tmp_path)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images.shape == (4, 3, 6, 5)
    for n, key in enumerate([("cat", 0), ("cat", 1), ("dog", 0), ("dog", 1)]):
        assert np.array_equal(ds.images[n].numpy(), pics[key])
    x = ds.images.double() / 255
    assert np.allclose(ds.mean, x.mean((0, 2, 3)).numpy())
    assert np.allclose(ds.std, x.transpose(0, 1).reshape(3, -1).std(1, unbiased=False).numpy())
    te = load_dataset("imagefolder", root=tmp_path, split="test")
    assert len(te) == 2 and te.mean == ds.mean  # statistics come from the train split

    gray = tmp_path / "gray"
    (gray / "a").mkdir(parents=True)
    g = _u8(4, 4)
    Image.fromarray(g).save(gray / "a" / "g.png")
    gds = load_dataset("imagefolder", root=gray)
    assert gds.images.shape == (1, 1, 4, 4) and np.array_equal(gds.images[0, 0].numpy(), g)
    Image.fromarray(_u8(5, 4)).save(gray / "a" / "h.png")
    with pytest.raises(ValueError, match=r"h.png: image size 4x5 \(WxH\) differs"):
        load_dataset("imagefolder", root=gray)
    with pytest.raises(FileNotFoundError, match="test"):
        load_dataset("imagefolder", root=gray, split="test")


# ----------------------------------------------------------------------------- arrays / npz


def test_npz_layouts(tmp_path):
    rows = _u8(5, 3072)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=rows, y_train=np.arange(5), x_test=rows[:2], y_test=np.array([4, 0]),
             classes=np.array(list("abcde")))  # fmt: skip
    ds = load_dataset("npz", root=p)
    assert np.array_equal(ds.images.numpy(), rows.reshape(5, 3, 32, 32))
    assert ds.classes == list("abcde") and ds.labels.tolist() == [0, 1, 2, 3, 4]
    te = load_dataset("npz", root=p, split="test")
    assert te.labels.tolist() == [4, 0] and te.mean == ds.mean

    nhwc = _u8(3, 7, 9, 3)
    np.savez(p, images=nhwc, labels=np.array([[1], [0], [1]]))
    ds = load_dataset("npz", root=str(p))
    assert np.array_equal(ds.images.numpy(), nhwc.transpose(0, 3, 1, 2))
    assert ds.labels.tolist() == [1, 0, 1] and ds.classes == ["0", "1"]
    with pytest.raises(
        ValueError, match=r"no images for split 'test': looked for \['x_test', 'images_test'\]"
    ):
        load_dataset("npz", root=p, split="test")

    f = RNG.random((2, 1, 4, 4)).astype(np.float64)
    np.savez(p, x=f, y=np.array([0, 0]))
    ds = load_dataset("npz", root=p)
    assert ds.images.dtype == torch.float32 and torch.equal(ds.images, torch.from_numpy(f).float())
    np.savez(p, x=f * 3, y=np.array([0, 0]))
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\]"):
        load_dataset("npz", root=p)
    np.savez(p, x=_u8(2, 4, 4, 4), y=np.array([0, 0]))
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        load_dataset("npz", root=p)
    np.savez(p, x=_u8(2, 4, 4), y=np.array([0, 0, 1]))
    with pytest.raises(ValueError, match=r"expected shape \(2,\)"):
        load_dataset("npz", root=p)
    p.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="d.npz is not what was expected.*truncated or damaged"):
        load_dataset("npz", root=p)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_dataset("npz", root=tmp_path / "nope.npz")


def test_to_nchw_rules():
    a = _u8(2, 3, 4, 5)
    assert to_nchw(a).shape == (2, 3, 4, 5)
    assert np.array_equal(to_nchw(a.transpose(0, 2, 3, 1)), a)
    assert to_nchw(_u8(2, 6, 6)).shape == (2, 1, 6, 6)
    assert to_nchw(_u8(2, 36)).shape == (2, 1, 6, 6)
    assert to_nchw(_u8(2, 108)).shape == (2, 3, 6, 6)
    assert to_nchw(np.arange(8, dtype=np.int32).reshape(2, 1, 2, 2)).dtype == np.uint8
    with pytest.raises(ValueError, match="neither 3"):
        to_nchw(_u8(2, 7))


def test_from_arrays_and_dataset_validation():
    x = torch.randint(0, 256, (4, 1, 3, 3), dtype=torch.uint8)
    ds = from_arrays(x, torch.tensor([0, 1, 2, 1]))
    assert torch.equal(ds.images, x) and ds.num_classes == 3 and ds.im_size == (3, 3)
    assert ds.channels == 1 and len(ds) == 4
    with pytest.raises(ValueError, match="labels span 0..5 but there are 3 classes"):
        ImageDataset(x, torch.tensor([0, 1, 5, 1]), ["a", "b", "c"], (0.5,), (0.2,))
    with pytest.raises(ValueError, match="one value per channel"):
        ImageDataset(x, torch.tensor([0, 1, 2, 1]), ["a", "b", "c"], (0.5, 0.5), (0.2,))


# ----------------------------------------------------------------------------- names, digits


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(ValueError) as e:
        load_dataset("imagenet-1k", root=tmp_path)
    for k in KNOWN_DATASETS:
        assert k in str(e.value)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_dataset("digits", split="dev")
    with pytest.raises(ValueError, match=r"load_dataset\('cifar10'\) needs root="):
        load_dataset("cifar10")


def test_no_default_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path.parent / "shared" / "data").mkdir(parents=True, exist_ok=True)  # not looked at
    with pytest.raises(ValueError) as e:
        load_dataset("mnist")
    msg = str(e.value)
    assert "'mnist'" in msg and "MNIST/raw/" in msg and "\n" not in msg
    with pytest.raises(ValueError, match=r"needs root=: the \.npz file"):
        load_dataset("npz", split="test")
    assert len(load_dataset("digits")) > 0  # digits needs no files


def test_digits_split():
    tr, te = load_dataset("digits"), load_dataset("digits", split="test")
    assert len(tr) + len(te) == 1797 and tr.images.shape[1:] == (1, 8, 8)
    assert tr.images.dtype == torch.uint8 and int(tr.images.max()) == 255
    assert abs(len(te) / 1797 - 0.2) < 0.01
    for c in range(10):  # stratified
        frac = (te.labels == c).sum().item() / (
            (te.labels == c).sum() + (tr.labels == c).sum()
        ).item()
        assert abs(frac - 0.2) < 0.02
    again = load_dataset("digits", split="test")
    assert torch.equal(again.images, te.images)  # deterministic
    assert te.mean == tr.mean
    from sklearn.datasets import load_digits

    d = load_digits()
    assert sorted(tr.labels.tolist() + te.labels.tolist()) == sorted(d.target.tolist())
