"""Readers for the original dataset files, in torchvision's folder layout, without torchvision.

Every reader returns plain numpy arrays: ``images (N, C, H, W)`` uint8, ``labels (N,)``
int64 and the class names. Inputs are validated before any reshape: a missing file raises
``FileNotFoundError`` naming the exact path expected; a truncated or corrupt file raises
``ValueError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtt_fast.utils import load_numpy_file

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
SVHN_CLASSES = [str(i) for i in range(10)]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

Arrays = tuple[np.ndarray, np.ndarray, list[str]]


def _need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected the file {path}")
    return path


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: expected the folder {path}")
    return path


# ----------------------------------------------------------------------------- idx (MNIST)

# idx type code -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gz(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one file in LeCun's idx format (``*-ubyte`` or ``*-ubyte.gz``).

    Args:
        path: the file; a ``.gz`` suffix means gzip-compressed.

    Returns:
        The array with the dimensions given in the header, native byte order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: wrong magic number, truncated file or trailing bytes.
    """
    path = _need_file(Path(path), "idx file")
    raw = _read_maybe_gz(path)
    if len(raw) < 4:
        raise ValueError(
            f"{path}: truncated idx file ({len(raw)} bytes, shorter than the 4-byte magic number)"
        )
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an idx file (magic number 0x{raw[:4].hex()}; expected 0x0000, a type "
            f"code such as 0x08 for uint8, and the number of dimensions, e.g. 0x00000803)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path}: truncated idx file ({len(raw)} bytes, the header of a {ndim}-d array needs {header})"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "trailing bytes in"
        raise ValueError(
            f"{path}: {what} idx file ({len(raw)} bytes; the header says shape {tuple(dims)} "
            f"of {dtype.name}, i.e. {expected} bytes)"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=expected - header, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # copy: writable, native order


def _idx_file(raw_dir: Path, stem: str) -> Path:
    plain = raw_dir / stem
    if plain.is_file():
        return plain
    gz = raw_dir / (stem + ".gz")
    if gz.is_file():
        return gz
    raise FileNotFoundError(f"idx file not found: expected {plain} or {gz}")


def read_mnist(root: str | Path, split: str = "train", folder: str = "MNIST") -> Arrays:
    """MNIST or Fashion-MNIST from ``<root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    Args:
        root: the folder holding ``MNIST/`` (or ``FashionMNIST/``), as for torchvision.
        split: ``"train"`` or ``"test"``.
        folder: ``"MNIST"`` or ``"FashionMNIST"``.

    Returns:
        ``images (N, 1, 28, 28)`` uint8, ``labels (N,)`` int64, class names.
    """
    raw_dir = Path(root) / folder / "raw"
    prefix = "train" if split == "train" else "t10k"
    img_path = _idx_file(raw_dir, f"{prefix}-images-idx3-ubyte")
    lab_path = _idx_file(raw_dir, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{img_path}: expected a 3-d uint8 idx array (N, H, W), got {images.ndim}-d {images.dtype}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"{lab_path}: expected a 1-d uint8 idx array (N,), got {labels.ndim}-d {labels.dtype}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} labels"
        )
    if len(labels) and labels.max() > 9:
        raise ValueError(f"{lab_path}: label {int(labels.max())} is out of range 0..9")
    classes = FASHION_CLASSES if folder == "FashionMNIST" else MNIST_CLASSES
    return images[:, None], labels.astype(np.int64), list(classes)


# ----------------------------------------------------------------------------- CIFAR pickles


def _numpy_global(module: str, name: str):
    import importlib

    if module.startswith("numpy.core") and hasattr(np, "_core"):  # numpy >= 2 renamed it
        module = "numpy._core" + module[len("numpy.core") :]
    return getattr(importlib.import_module(module), name)


# The only globals a CIFAR pickle needs: numpy arrays / dtypes and py3 bytes at protocol 2.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load the global {module}.{name} (a CIFAR pickle holds only "
                f"dicts, lists, strings and numpy arrays)"
            )
        if module == "_codecs":
            import codecs

            return codecs.encode
        return _numpy_global(module, name)


def _key(k) -> object:
    return k.decode("latin1") if isinstance(k, bytes) else k


def _text(s) -> str:
    return s.decode("utf-8", errors="replace") if isinstance(s, bytes) else str(s)


def load_cifar_pickle(path: str | Path) -> dict:
    """Load one python2-era CIFAR pickle with a restricted unpickler; keys become ``str``.

    Only numpy arrays, dtypes and builtin containers may appear in the file: any other
    global is refused, so a malicious file cannot run code.
    """
    path = _need_file(Path(path), "CIFAR file")
    try:
        with open(path, "rb") as f:
            # latin1 is numpy's advice for python2 pickles of arrays; py3 bytes keys stay bytes
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error, UnicodeDecodeError, MemoryError) as e:  # fmt: skip
        raise ValueError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {_key(k): v for k, v in obj.items()}


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = load_cifar_pickle(path)
    for k in ("data", label_key):
        if k not in d:
            raise ValueError(f"{path}: no {k!r} entry (found keys {sorted(map(str, d))})")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise ValueError(
            f"{path}: 'data' must be an (N, 3072) array of 32x32 RGB rows, got {shape}"
        )
    if data.dtype != np.uint8:
        if (
            not np.issubdtype(data.dtype, np.integer)
            or data.min(initial=0) < 0
            or data.max(initial=0) > 255
        ):
            raise ValueError(
                f"{path}: 'data' must hold uint8 pixels 0..255, got dtype {data.dtype}"
            )
        data = data.astype(np.uint8)
    try:
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {label_key!r} is not a list of integers ({e})") from None
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} entries in {label_key!r}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_classes(meta_path: Path, key: str) -> list[str]:
    meta = load_cifar_pickle(meta_path)
    if key not in meta:
        raise ValueError(f"{meta_path}: no {key!r} entry (found keys {sorted(map(str, meta))})")
    return [_text(s) for s in meta[key]]


def _check_labels(labels: np.ndarray, n_classes: int, where: Path | str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{where}: labels span {int(labels.min())}..{int(labels.max())}, outside 0..{n_classes - 1}"
        )


def read_cifar10(root: str | Path, split: str = "train") -> Arrays:
    """CIFAR-10 from ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    Returns:
        ``images (N, 3, 32, 32)`` uint8, ``labels (N,)`` int64, the 10 class names.
    """
    base = _need_dir(Path(root) / "cifar-10-batches-py", "CIFAR-10")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_cifar_batch(_need_file(base / n, "CIFAR-10 batch"), "labels") for n in names]
    classes = _cifar_classes(_need_file(base / "batches.meta", "CIFAR-10 metadata"), "label_names")
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    _check_labels(labels, len(classes), base)
    return images, labels, classes


def read_cifar100(root: str | Path, split: str = "train") -> Arrays:
    """CIFAR-100 (fine labels) from ``<root>/cifar-100-python/{train, test, meta}``.

    Returns:
        ``images (N, 3, 32, 32)`` uint8, ``labels (N,)`` int64 (fine), the 100 class names.
    """
    base = _need_dir(Path(root) / "cifar-100-python", "CIFAR-100")
    path = _need_file(base / ("train" if split == "train" else "test"), "CIFAR-100 file")
    images, labels = _cifar_batch(path, "fine_labels")
    classes = _cifar_classes(_need_file(base / "meta", "CIFAR-100 metadata"), "fine_label_names")
    _check_labels(labels, len(classes), path)
    return images, labels, classes


def read_cifar10_subset(root: str | Path, split: str = "train") -> Arrays:
    """The project's CIFAR-10 slice: ``<root>/cifar10-subset/{cifar10_subset.npz, batches.meta}``.

    The npz holds ``x_train (4000, 3072)``, ``y_train``, ``x_test (1000, 3072)``, ``y_test``
    in CIFAR's row layout (1024 red, then green, then blue values per image).

    Returns:
        ``images (N, 3, 32, 32)`` uint8, ``labels (N,)`` int64, the 10 class names.
    """
    base = _need_dir(Path(root) / "cifar10-subset", "cifar10-subset")
    path = _need_file(base / "cifar10_subset.npz", "cifar10-subset arrays")
    z = _open_npz(path)
    xk, yk = f"x_{split}", f"y_{split}"
    for k in (xk, yk):
        if k not in z:
            raise ValueError(f"{path}: no array {k!r} (found {sorted(z)})")
    x, y = z[xk], z[yk]
    if x.ndim != 2 or x.shape[1] != 3072 or x.dtype != np.uint8:
        raise ValueError(f"{path}: {xk!r} must be (N, 3072) uint8, got {x.shape} {x.dtype}")
    if y.shape != (len(x),):
        raise ValueError(f"{path}: {yk!r} must have shape ({len(x)},), got {y.shape}")
    classes = _cifar_classes(_need_file(base / "batches.meta", "CIFAR-10 metadata"), "label_names")
    labels = y.astype(np.int64)
    _check_labels(labels, len(classes), path)
    return x.reshape(-1, 3, 32, 32).copy(), labels, classes


# ----------------------------------------------------------------------------- SVHN


def read_svhn(root: str | Path, split: str = "train") -> Arrays:
    """SVHN cropped digits from ``<root>/{train,test,extra}_32x32.mat`` (needs scipy).

    ``X`` is stored as ``(32, 32, 3, N)``; label 10 means digit 0 and becomes 0, as in
    torchvision.

    Returns:
        ``images (N, 3, 32, 32)`` uint8, ``labels (N,)`` int64 in 0..9, classes ``"0".."9"``.
    """
    path = _need_file(Path(root) / f"{split}_32x32.mat", f"SVHN {split} split")
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError("reading SVHN .mat files needs scipy: pip install scipy") from None
    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises many types for a bad file
        raise ValueError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from None
    for k in ("X", "y"):
        if k not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise ValueError(f"{path}: no variable {k!r} (found {found})")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[2] != 3:
        raise ValueError(f"{path}: 'X' must have shape (H, W, 3, N), got {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: 'X' must be uint8, got {x.dtype}")
    labels = np.asarray(y).reshape(-1).astype(np.int64)
    if len(labels) != x.shape[3]:
        raise ValueError(
            f"{path}: 'X' holds {x.shape[3]} images but 'y' holds {len(labels)} labels"
        )
    labels[labels == 10] = 0
    _check_labels(labels, 10, path)
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))  # (H, W, C, N) -> (N, C, H, W)
    return images, labels, list(SVHN_CLASSES)


# ----------------------------------------------------------------------------- image files


def _image_mode(paths: Sequence[Path]) -> str:
    """'L' when every image is single-channel grayscale, else 'RGB' (alpha is dropped)."""
    from PIL import Image

    for p in paths:
        try:
            with Image.open(p) as im:
                if im.mode not in ("1", "L"):
                    return "RGB"
        except (OSError, ValueError) as e:  # UnidentifiedImageError is an OSError
            raise ValueError(f"{p}: cannot read this image ({e})") from None
    return "L"


def load_images(paths: Sequence[Path], mode: str = "RGB") -> np.ndarray:
    """Decode image files with Pillow into one ``(N, C, H, W)`` uint8 array.

    Args:
        paths: image files; all must have the same size.
        mode: ``"RGB"`` (C = 3) or ``"L"`` (C = 1).

    Raises:
        ValueError: an undecodable file, or a file whose size differs from the first one's.
    """
    from PIL import Image

    out: np.ndarray | None = None
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert(mode), dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise ValueError(f"{p}: cannot decode this image ({e})") from None
        if a.ndim == 2:
            a = a[:, :, None]
        if out is None:
            out = np.empty((len(paths), a.shape[2], a.shape[0], a.shape[1]), dtype=np.uint8)
        elif a.shape[:2] != out.shape[2:]:
            raise ValueError(
                f"{p}: image size {a.shape[1]}x{a.shape[0]} (WxH) differs from "
                f"{out.shape[3]}x{out.shape[2]} of {paths[0]}; all images must share one size"
            )
        out[i] = a.transpose(2, 0, 1)
    if out is None:
        raise ValueError("no images to load")
    return out


def read_tiny_imagenet(root: str | Path, split: str = "train") -> Arrays:
    """Tiny ImageNet from ``<root>/tiny-imagenet-200``.

    Train images: ``train/<wnid>/images/*.JPEG``; test = the labelled validation set:
    ``val/images/*`` labelled by ``val/val_annotations.txt`` (tab-separated: file, wnid, ...).
    Classes are the wnids of ``wnids.txt`` in sorted order, as torchvision's ``ImageFolder``
    (which the original MTT code uses) numbers them; the official ``wnids.txt`` is not
    sorted, so its own order would not line up with imported original buffers.

    Returns:
        ``images (N, 3, 64, 64)`` uint8 (grayscale files converted to RGB), ``labels (N,)``
        int64, the wnids.
    """
    base = _need_dir(Path(root) / "tiny-imagenet-200", "Tiny ImageNet")
    wnid_path = _need_file(base / "wnids.txt", "Tiny ImageNet class list")
    wnids = sorted({w.strip() for w in wnid_path.read_text().splitlines() if w.strip()})
    if not wnids:
        raise ValueError(f"{wnid_path}: no class ids in this file")
    index = {w: i for i, w in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for w in wnids:
            d = _need_dir(base / "train" / w / "images", f"Tiny ImageNet images of class {w}")
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            paths += files
            labels += [index[w]] * len(files)
    else:
        ann = _need_file(base / "val" / "val_annotations.txt", "Tiny ImageNet validation labels")
        img_dir = _need_dir(base / "val" / "images", "Tiny ImageNet validation images")
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1].strip() not in index:
                raise ValueError(
                    f"{ann}, line {n}: expected 'file<TAB>wnid...' with a wnid from {wnid_path}, got {line!r}"
                )
            paths.append(_need_file(img_dir / fields[0].strip(), "Tiny ImageNet validation image"))
            labels.append(index[fields[1].strip()])
    if not paths:
        raise ValueError(f"{base}: no {split} images found")
    return load_images(paths, "RGB"), np.asarray(labels, dtype=np.int64), wnids


def image_folder_split(root: str | Path, split: str) -> Path:
    """The folder of one split of an ImageFolder dataset.

    ``<root>/<split>`` when it exists (``val`` also serves ``test``); for ``train``
    without such a folder, ``<root>`` itself.

    Raises:
        FileNotFoundError: no folder for a test split, naming the folders expected.
    """
    root = Path(root)
    names = ["train"] if split == "train" else ["test", "val"]
    for n in names:
        if (root / n).is_dir():
            return root / n
    if split == "train":
        return root
    raise FileNotFoundError(
        f"image folder: no test split: expected the folder {root / 'test'} (or {root / 'val'})"
    )


def read_image_folder(root: str | Path) -> Arrays:
    """An ImageFolder: ``<root>/<class>/*.{png,jpg,jpeg,bmp,ppm,pgm,tif,tiff,webp}``.

    Classes are the sub-folder names, sorted; files are sorted within a class. Images are
    read as 1-channel when every file is grayscale, else as RGB; all must share one size.

    Returns:
        ``images (N, C, H, W)`` uint8, ``labels (N,)`` int64, class names.
    """
    root = _need_dir(Path(root), "image folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(
            f"no class folders in {root} (expected {root}/<class>/<image files>)"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        files = sorted(
            p for p in (root / c).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise FileNotFoundError(
            f"no image files under {root}/<class>/ (extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return load_images(paths, _image_mode(paths)), np.asarray(labels, dtype=np.int64), classes


# ----------------------------------------------------------------------------- arrays / npz


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    arrays = load_numpy_file(path, ".npz archive of arrays")
    if not isinstance(arrays, dict):
        raise ValueError(f"{path} is not what was expected (expected: .npz archive): a .npy array")
    return arrays


def to_nchw(arr: np.ndarray, what: str = "images") -> np.ndarray:
    """Bring an image array to ``(N, C, H, W)`` by a fixed rule.

    * ``(N, D)``: flattened rows; ``D = 3*s*s`` is CIFAR's row layout (all red, then green,
      then blue values) -> ``(N, 3, s, s)``; ``D = s*s`` -> ``(N, 1, s, s)``.
    * ``(N, H, W)`` -> ``(N, 1, H, W)``.
    * ``(N, C, H, W)`` when ``C`` is 1 or 3; otherwise ``(N, H, W, C)`` when the last axis
      is 1 or 3 (moved to axis 1); otherwise an error.

    dtype: uint8 stays uint8 (0..255); other integer types must lie in 0..255 and become
    uint8; floating types become float32 and must lie in [0, 1].

    Raises:
        ValueError: any other shape, dtype or value range, naming ``what``.
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        n, d = arr.shape
        s3, s1 = int(round((d / 3) ** 0.5)), int(round(d**0.5))
        if d > 0 and 3 * s3 * s3 == d:
            arr = arr.reshape(n, 3, s3, s3)
        elif d > 0 and s1 * s1 == d:
            arr = arr.reshape(n, 1, s1, s1)
        else:
            raise ValueError(
                f"{what}: flat rows of {d} values are neither 3*s*s (CIFAR row layout) nor s*s"
            )
    elif arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[1] not in (1, 3):
            if arr.shape[3] in (1, 3):
                arr = arr.transpose(0, 3, 1, 2)
            else:
                raise ValueError(
                    f"{what}: cannot tell the channel axis of shape {arr.shape}: expected "
                    f"(N, C, H, W) or (N, H, W, C) with C = 1 or 3"
                )
    else:
        raise ValueError(
            f"{what}: expected (N, D), (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(
                f"{what}: integer pixels must lie in 0..255, got {arr.min()}..{arr.max()}"
            )
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.isfinite(arr).all():
            raise ValueError(f"{what}: float pixels must be finite")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(
                f"{what}: float pixels must lie in [0, 1] (pass uint8 for 0..255), got "
                f"{float(arr.min()):.4g}..{float(arr.max()):.4g}"
            )
        return np.ascontiguousarray(arr, dtype=np.float32)
    raise ValueError(f"{what}: unsupported dtype {arr.dtype} (use uint8 or float in [0, 1])")


def to_labels(arr: np.ndarray, n: int, what: str = "labels") -> np.ndarray:
    """``(N,)`` or ``(N, 1)`` integer (or integral float) labels >= 0 -> ``(N,)`` int64."""
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n,):
        raise ValueError(f"{what}: expected shape ({n},) to match the images, got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{what}: float labels must be whole numbers")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: expected integer class indices, got dtype {arr.dtype}")
    out = arr.astype(np.int64)
    if n and out.min() < 0:
        raise ValueError(f"{what}: negative label {int(out.min())}")
    return out


def read_npz(path: str | Path, split: str = "train") -> Arrays:
    """Images and labels from a user's ``.npz``.

    Keys, for split ``s``: images ``x_s`` or ``images_s`` and labels ``y_s`` or ``labels_s``;
    for ``s = "train"`` the plain keys ``x`` / ``images`` and ``y`` / ``labels`` also serve.
    Optional ``classes`` (strings); else ``"0" .. str(max label)``. Shapes and dtypes follow
    :func:`to_nchw`.

    Returns:
        ``images (N, C, H, W)`` uint8 or float32, ``labels (N,)`` int64, class names.
    """
    path = _need_file(Path(path), "npz file")
    z = _open_npz(path)

    def pick(names: list[str], what: str) -> tuple[str, np.ndarray]:
        for k in names:
            if k in z:
                return k, z[k]
        raise ValueError(
            f"{path}: no {what} for split {split!r}: looked for {names}, found {sorted(z)}"
        )

    extra = ["x", "images"] if split == "train" else []
    xk, x = pick([f"x_{split}", f"images_{split}", *extra], "images")
    yk, y = pick([f"y_{split}", f"labels_{split}", *(["y", "labels"] if extra else [])], "labels")
    images = to_nchw(x, f"{path}[{xk!r}]")
    labels = to_labels(y, len(images), f"{path}[{yk!r}]")
    if "classes" in z:
        if z["classes"].dtype.kind not in "US":
            raise ValueError(f"{path}: 'classes' must hold strings, got dtype {z['classes'].dtype}")
        classes = [_text(c) for c in z["classes"].reshape(-1).tolist()]
    else:
        classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    _check_labels(labels, len(classes), path)
    return images, labels, classes


# ----------------------------------------------------------------------------- sklearn digits


def read_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> Arrays:
    """scikit-learn's bundled 8x8 digits (offline), split deterministically.

    Pixel values 0..16 become uint8 ``round(v * 255 / 16)``. The split is stratified: in
    each class, a permutation from ``numpy.random.default_rng(seed)`` puts the first
    ``round(test_fraction * n_class)`` images in test, the rest in train (kept in the
    original order).

    Returns:
        ``images (N, 1, 8, 8)`` uint8, ``labels (N,)`` int64, classes ``"0".."9"``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: pip install scikit-learn"
        ) from None
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        is_test[rng.permutation(idx)[: int(round(test_fraction * len(idx)))]] = True
    keep = is_test if split == "test" else ~is_test
    return images[keep], labels[keep], [str(i) for i in range(10)]
