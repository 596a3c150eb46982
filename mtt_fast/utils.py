"""Small shared helpers: atomic file writes, image grids, JSON-lines metrics, RNG states.

Every file the pipeline writes (checkpoints, the synthetic set, reports, store metadata)
goes through :func:`atomic_save` / :func:`atomic_write_text`: the bytes are written to a
temporary file in the destination folder, flushed and fsync'ed, then moved over the
destination with :func:`os.replace`. A reader (or a run killed half way) therefore sees
either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "atomic_open",
    "atomic_publish",
    "atomic_save",
    "atomic_write_text",
    "atomic_write_json",
    "image_grid",
    "save_image_grid",
    "MetricsWriter",
    "fsync_dir",
    "keep_freed_memory",
    "load_numpy_file",
    "load_torch_file",
    "pid_temp_path",
    "read_json",
    "read_jsonl",
    "remove_dead_temps",
    "rng_state",
    "set_rng_state",
    "to_jsonable",
]


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit move it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. The
    temporary name records this process (:func:`pid_temp_path`), so the leftover of a
    writer killed mid-write is removed by :func:`remove_dead_temps`. The file gets the
    permissions of any new file (``0666`` less the umask), not ``mkstemp``'s ``0600``.

    Args:
        path: destination file; its parent folder is created if needed.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pid_temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically (temp file + ``os.replace``). Returns the path."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically. Returns the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically; tensors / numpy values / paths are converted."""
    return atomic_write_text(json.dumps(to_jsonable(obj), indent=indent) + "\n", path)


def to_jsonable(obj: Any) -> Any:
    """Recursively turn tensors, numpy values, paths, tuples and dataclasses into JSON types.

    Non-finite floats become ``None`` (JSON has no NaN / inf).
    """
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        return {k: to_jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if torch.is_tensor(obj):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def image_grid(
    images: torch.Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1
) -> np.ndarray:
    """Tile images into one uint8 picture.

    Args:
        images: (N, C, H, W) float in [0, 1] (clamped), C in {1, 3}.
        nrow: images per row (default: ``ceil(sqrt(N))``).
        pad: pixels of white between tiles.
        scale: integer nearest-neighbour upscaling of every tile (small images).

    Returns:
        (rows, cols, 3) or (rows, cols) uint8 array.
    """
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"image_grid expects (N, C, H, W) with C in {{1, 3}}, got {shape}")
    if images.shape[0] == 0:
        raise ValueError("image_grid got no images")
    x = images.detach().float().cpu().clamp(0, 1)
    x = torch.nan_to_num(x, nan=0.0)
    if scale > 1:
        x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y0 : y0 + h, x0 : x0 + w] = x[i]
    arr = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[..., 0] if c == 1 else arr


def save_image_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    nrow: int | None = None,
    pad: int = 1,
    scale: int | None = None,
) -> Path:
    """Save ``images`` (N, C, H, W) in [0, 1] as one PNG grid, atomically.

    ``scale`` defaults to an upscaling that makes tiles at least 64 pixels wide.
    """
    from PIL import Image

    if scale is None:
        scale = max(1, math.ceil(64 / images.shape[-1])) if torch.is_tensor(images) else 1
    arr = image_grid(images, nrow=nrow, pad=pad, scale=scale)
    with atomic_open(path, "wb") as f:
        Image.fromarray(arr).save(f, format="PNG")
    return Path(path)


class MetricsWriter:
    """Append-only JSON-lines log: one dict per line, flushed at every write.

    Args:
        path: the ``.jsonl`` file (parent folders created).
        truncate: start a fresh file instead of appending (default False).

    Example::

        with MetricsWriter(out / "metrics.jsonl") as log:
            log.write({"iteration": 10, "loss": 0.5})
    """

    def __init__(self, path: str | os.PathLike, truncate: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w" if truncate else "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(to_jsonable(record)) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a file that is not JSON raises ``ValueError`` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a JSON file ({e})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSON-lines file (a torn last line from a killed run is skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _np_state_pack(st: tuple) -> dict:
    # plain types and tensors only, so checkpoints load with torch.load(weights_only=True)
    name, keys, pos, has_gauss, cached = st
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _np_state_unpack(d: dict) -> tuple:
    keys = d["keys"].numpy().astype(np.uint32)
    return (d["name"], keys, d["pos"], d["has_gauss"], d["cached"])


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    """Snapshot of every RNG that can influence a run: Python, NumPy, torch (CPU and each
    CUDA device) and the given named ``torch.Generator`` objects."""
    state = {
        "python": random.getstate(),
        "numpy": _np_state_pack(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore a :func:`rng_state` snapshot (generators are restored in place by name)."""
    random.setstate(state["python"])
    np.random.set_state(_np_state_unpack(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", {})
    for k, g in (generators or {}).items():
        if k not in saved:
            raise KeyError(f"checkpoint has no state for generator {k!r}")
        g.set_state(saved[k])


# ----------------------------------------------------------------------------- shared folders
# Files that several processes may write into one folder (a trajectory store): temporary
# names carry the writer's pid, so a later process can tell a dead writer's leftover.

_PID_TMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{12}$")


def pid_temp_path(path: str | os.PathLike) -> Path:
    """A temporary name beside ``path`` that records this process: ``.NAME.tmp-PID-HEX``."""
    path = Path(path)
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a folder's entries (a rename, a new link) durable; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_publish(
    write: Callable[[IO[bytes]], None],
    path: str | os.PathLike,
    overwrite: bool = True,
    next_name: Callable[[Path], Path] | None = None,
) -> Path:
    """Write a file whole under a :func:`pid_temp_path` name, then move it into place.

    The bytes are flushed and fsync'ed before the move and the folder afterwards. A killed
    writer leaves at worst its temporary file, which :func:`remove_dead_temps` removes.

    Args:
        write: called once with the open binary temporary file.
        path: destination; its folder must exist.
        overwrite: ``True``: replace ``path`` (``os.replace``). ``False``: never replace an
            existing file (published with a hard link, or a rename where the file system
            has no hard links).
        next_name: with ``overwrite=False``, the name to try after a taken one (e.g. the
            next expert index); without it a taken name raises ``FileExistsError``.

    Returns:
        The path the file was published under.

    Raises:
        FileExistsError: ``overwrite=False``, ``path`` exists and no ``next_name``.
    """
    path = Path(path)
    tmp = pid_temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            while True:
                try:
                    os.link(tmp, path)  # fails if path exists: a concurrent writer's file stays
                    break
                except FileExistsError:
                    if next_name is None:
                        raise
                    path = next_name(path)
                except OSError:  # no hard links here
                    if path.exists():
                        if next_name is None:
                            raise FileExistsError(f"{path} already exists") from None
                        path = next_name(path)
                        continue
                    os.replace(tmp, path)
                    break
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours, or unsupported: leave its file alone
        return True
    return True


def remove_dead_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the :func:`pid_temp_path` files in ``folder`` whose writer process is gone.

    Files of live processes (and of this one) are kept.

    Returns:
        The files removed.
    """
    removed = []
    for p in Path(folder).iterdir():
        m = _PID_TMP_RE.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Let glibc keep freed heap memory for reuse instead of returning it to the OS.

    torch's CPU allocator takes every tensor from ``malloc``; glibc serves blocks above its
    mmap threshold (at most 32 MiB) with fresh ``mmap`` pages, so every large activation of
    every student step page-faults its memory in again (about a third of a 52 MB copy's
    time on the project machine). This raises the mmap threshold and the trim threshold to
    ``threshold_bytes`` (``mallopt``), so freed blocks are reused. Process-wide; peak
    memory is unchanged, the resident set stays at its high-water mark.

    Returns:
        True when applied (glibc), False elsewhere (no effect).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    t = int(min(threshold_bytes, 2**31 - 1))
    return bool(libc.mallopt(m_mmap_threshold, t)) and bool(libc.mallopt(m_trim_threshold, t))


# ----------------------------------------------------------------------------- safe reading
# Every file the package reads back goes through these: nothing is unpickled beyond
# tensors / arrays and plain containers, and a file that is not what was expected gets a
# one-line error naming it. The libraries' own messages are not passed on for refused
# content: they advise an unsafe load (``weights_only=False``, ``allow_pickle=True``).


def _head(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _not_expected(path: Path, what: str, e: BaseException | None, magic: tuple) -> ValueError:
    import pickle
    import zipfile

    head = _head(path)
    if not head.startswith(magic):
        why = "it is not in that file format (unrecognised first bytes)"
    elif e is None:
        why = "unexpected content"
    elif isinstance(e, pickle.UnpicklingError) or "pickle" in str(e).lower():
        why = "it holds objects other than tensors / arrays in plain containers (refused)"
    elif isinstance(e, (EOFError, zipfile.BadZipFile)) or "zip" in str(e).lower():
        why = "it is truncated or damaged"
    else:
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'unreadable'}"
    return ValueError(f"{path} is not what was expected (expected: {what}): {why}")


_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # zip (torch >= 1.6) or a legacy pickle
_NUMPY_MAGIC = (b"\x93NUMPY", b"PK\x03\x04")  # .npy or .npz


def load_torch_file(path: str | os.PathLike, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with one-line errors.

    Args:
        path: the file.
        what: what it should be, for messages (e.g. ``"mtt-fast checkpoint"``).

    Raises:
        FileNotFoundError: no such file (names it).
        ValueError: anything else: names the file and ``what``, never suggests an unsafe load.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise _not_expected(path, what, e, _TORCH_MAGIC) from None


def load_numpy_file(path: str | os.PathLike, what: str, **kwargs: Any) -> Any:
    """``np.load(path, allow_pickle=False, **kwargs)`` with one-line errors (as
    :func:`load_torch_file`). An ``.npz`` is read whole into a dict of arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        obj = np.load(path, allow_pickle=False, **kwargs)
        if isinstance(obj, np.lib.npyio.NpzFile):
            with obj as z:
                return {k: z[k] for k in z.files}
        return obj
    except Exception as e:  # ValueError (pickled data), BadZipFile, OSError, EOFError, ...
        raise _not_expected(path, what, e, _NUMPY_MAGIC) from None
