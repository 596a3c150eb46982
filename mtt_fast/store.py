"""Expert trajectories on disk: :class:`TrajectoryStore` and :func:`import_buffers`.

A store is a folder::

    meta.json            model, dataset, preprocessing, parameter layout, epochs, ...
    expert_00000.npy     float32 (epochs + 1, P): flat parameters before training and
    expert_00001.npy     after every epoch, in ``model.named_parameters()`` order
    ...

Each expert file is written whole to a temporary file in the same folder, fsynced and
then moved into place, so a killed run leaves only whole experts (plus, at worst, a
temporary file that is ignored and cleaned on the next open). Experts are read with
``np.load(mmap_mode="r")``: sampling a ``(start, target)`` pair reads two rows.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtt_fast._version import __version__

__all__ = ["TrajectoryStore", "import_buffers", "FORMAT", "FORMAT_VERSION"]

FORMAT = "mtt-fast-trajectories"
FORMAT_VERSION = 1
META = "meta.json"
_EXPERT_RE = re.compile(r"^expert_(\d{5,})\.npy$")
_TMP_RE = re.compile(r"^\.(?:expert_\d+\.npy|meta\.json)\.tmp-(\d+)-[0-9a-f]+$")


def _expert_name(i: int) -> str:
    return f"expert_{i:05d}.npy"


def _jsonable(x: Any) -> Any:
    """Tuples -> lists, numpy / torch scalars -> python, recursively (what JSON keeps)."""
    if hasattr(x, "to_dict") and callable(x.to_dict):
        return _jsonable(x.to_dict())
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    if torch.is_tensor(x) and x.dim() == 0:
        return x.item()
    return x


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform; the data file itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_path(folder: Path, final_name: str) -> Path:
    return folder / f".{final_name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"


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


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = _tmp_path(path.parent, path.name)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _describe(meta: Mapping) -> str:
    s = f"model {meta.get('model', '?')} on {meta.get('dataset', '?')}"
    zca = meta.get("zca", (meta.get("preprocessing") or {}).get("zca"))
    return s + f" (zca={zca})"


def _meta_value(meta: Mapping, key: str) -> Any:
    if key == "zca" and "zca" not in meta:
        return (meta.get("preprocessing") or {}).get("zca")
    return meta.get(key)


class TrajectoryStore:
    """A folder of expert trajectories, read lazily.

    Use :meth:`create` for a new store and :meth:`open` for an existing one.

    Attributes:
        path: the folder.
        meta: the parsed ``meta.json`` (dict).
    """

    def __init__(self, path: str | os.PathLike, meta: dict) -> None:
        self.path = Path(path)
        self.meta = meta
        self._cache: dict[int, np.memmap] = {}
        self._indices: list[int] = []
        self.refresh()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | os.PathLike, meta: dict) -> TrajectoryStore:
        """Make a new, empty store at ``path`` (created if needed).

        Args:
            path: folder; must not already hold a ``meta.json``.
            meta: JSON-able metadata. Required: ``epochs`` (int) and ``num_params`` or
                ``layout`` (a ``ParamLayout`` or its ``to_dict()``). Conventional keys:
                ``model``, ``model_spec``, ``dataset``, ``channels``, ``im_size``,
                ``num_classes``, ``classes``, ``preprocessing`` (``{"zca", "zca_eps", ...}``),
                ``zca``, ``lr``, ``momentum``, ``seed``.

        Returns:
            The open, empty store.

        Raises:
            FileExistsError: a store already exists at ``path``.
            ValueError: ``meta`` lacks ``epochs`` or the parameter count.
        """
        path = Path(path)
        if (path / META).exists():
            raise FileExistsError(f"a trajectory store already exists at {path}")
        meta = _jsonable(dict(meta))
        if "epochs" not in meta or int(meta["epochs"]) < 1:
            raise ValueError(f"store meta needs 'epochs' >= 1, got {meta.get('epochs')!r}")
        meta["epochs"] = int(meta["epochs"])
        lay = meta.get("layout")
        if lay is not None:
            n = _layout_num_params(lay)
            if "num_params" in meta and int(meta["num_params"]) != n:
                raise ValueError(
                    f"store meta num_params={meta['num_params']} disagrees with its layout "
                    f"({n} parameters)"
                )
            meta["num_params"] = n
        if "num_params" not in meta or int(meta["num_params"]) < 1:
            raise ValueError("store meta needs 'num_params' (or 'layout')")
        meta["num_params"] = int(meta["num_params"])
        if "zca" not in meta and isinstance(meta.get("preprocessing"), Mapping):
            meta["zca"] = bool(meta["preprocessing"].get("zca", False))
        meta.setdefault("format", FORMAT)
        meta.setdefault("format_version", FORMAT_VERSION)
        meta.setdefault("version", __version__)
        path.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(path / META, meta)
        return cls(path, meta)

    @classmethod
    def open(cls, path: str | os.PathLike, expect: Mapping | None = None) -> TrajectoryStore:
        """Open an existing store, optionally checking it was made for what is asked.

        Temporary files left by a killed writer are removed (only those whose process is
        gone) and never counted as experts.

        Args:
            path: the store folder.
            expect: keys that must match the store's meta, e.g. ``model``, ``dataset``,
                ``zca``, ``num_params``, ``layout`` (``ParamLayout`` or dict), ``epochs``.
                Values compare after a JSON round trip (tuples equal lists).

        Raises:
            FileNotFoundError: no folder or no ``meta.json`` (names the path).
            ValueError: unreadable ``meta.json``, or a mismatch with ``expect`` (names both
                sides and the differing keys).
        """
        path = Path(path)
        mpath = path / META
        if not path.is_dir():
            raise FileNotFoundError(f"no trajectory store at {path} (folder does not exist)")
        if not mpath.is_file():
            raise FileNotFoundError(f"no trajectory store at {path}: {mpath} is missing")
        try:
            meta = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"corrupt store metadata {mpath}: {e}") from e
        if not isinstance(meta, dict) or "epochs" not in meta or "num_params" not in meta:
            raise ValueError(f"corrupt store metadata {mpath}: needs 'epochs' and 'num_params'")
        if meta.get("format", FORMAT) != FORMAT:
            raise ValueError(f"{mpath} is not a {FORMAT} store (format={meta.get('format')!r})")
        _clean_tmp(path)
        store = cls(path, meta)
        if expect:
            store.check(expect)
        return store

    def check(self, expect: Mapping) -> None:
        """Raise ``ValueError`` if any key of ``expect`` differs from the store's meta."""
        exp = _jsonable(dict(expect))
        bad = []
        for k, v in exp.items():
            have = _meta_value(self.meta, k)
            if k == "zca":
                same = bool(have) == bool(v)
            else:
                same = have == v
            if not same:
                bad.append(k)
        if bad:
            asked = dict(self.meta)
            asked.update(exp)
            diffs = "; ".join(
                f"{k}: store has {_short(_meta_value(self.meta, k))}, asked {_short(exp[k])}"
                for k in bad
            )
            raise ValueError(
                f"store {self.path} was made for {_describe(self.meta)}; asked for "
                f"{_describe(asked)} ({diffs})"
            )

    # ------------------------------------------------------------------ properties
    def refresh(self) -> None:
        """Rescan the folder for experts (another process may have added some)."""
        idx = []
        for p in self.path.iterdir():
            m = _EXPERT_RE.match(p.name)
            if m:
                idx.append(int(m.group(1)))
        self._indices = sorted(idx)

    @property
    def num_experts(self) -> int:
        return len(self._indices)

    @property
    def epochs(self) -> int:
        """Epochs per expert; each expert has ``epochs + 1`` snapshots."""
        return int(self.meta["epochs"])

    @property
    def num_params(self) -> int:
        return int(self.meta["num_params"])

    @property
    def layout(self):
        """The flat parameter layout (``mtt_fast.models.functional.ParamLayout``) or None."""
        lay = self.meta.get("layout")
        if lay is None:
            return None
        from mtt_fast.models.functional import ParamLayout

        return ParamLayout.from_dict(lay)

    def __len__(self) -> int:
        return self.num_experts

    def __repr__(self) -> str:
        return (
            f"TrajectoryStore({str(self.path)!r}, {_describe(self.meta)}, "
            f"experts={self.num_experts}, epochs={self.epochs}, params={self.num_params})"
        )

    # ------------------------------------------------------------------ writing
    def add_expert(self, traj: torch.Tensor | np.ndarray) -> int:
        """Write one expert atomically.

        Args:
            traj: (epochs + 1, P) flat parameters (any float dtype; stored as float32).

        Returns:
            The new expert's index.

        Raises:
            ValueError: wrong shape or non-finite values.
        """
        if torch.is_tensor(traj):
            arr = traj.detach().to("cpu", torch.float32).numpy()
        else:
            arr = np.asarray(traj, dtype=np.float32)
        want = (self.epochs + 1, self.num_params)
        if arr.shape != want:
            raise ValueError(
                f"expert trajectory has shape {arr.shape}, store {self.path} needs {want} "
                f"(epochs + 1 snapshots of {self.num_params} parameters)"
            )
        if not np.isfinite(arr).all():
            bad = np.flatnonzero(~np.isfinite(arr).all(1))
            raise ValueError(
                f"expert trajectory has non-finite values (snapshots {bad[:10].tolist()}); "
                "the expert diverged: lower the lr"
            )
        arr = np.ascontiguousarray(arr)
        self.refresh()
        i = (self._indices[-1] + 1) if self._indices else 0
        tmp = _tmp_path(self.path, _expert_name(i))
        try:
            with open(tmp, "wb") as f:
                np.save(f, arr)
                f.flush()
                os.fsync(f.fileno())
            while True:
                final = self.path / _expert_name(i)
                try:
                    os.link(tmp, final)  # never overwrites a concurrent writer's expert
                    break
                except FileExistsError:
                    i += 1
                except OSError:  # no hard links here: plain atomic rename
                    if final.exists():
                        i += 1
                        continue
                    os.replace(tmp, final)
                    break
        finally:
            if tmp.exists():
                tmp.unlink()
        _fsync_dir(self.path)
        self.refresh()
        return i

    # ------------------------------------------------------------------ reading
    def _file(self, i: int) -> Path:
        if not 0 <= i < self.num_experts:
            self.refresh()
            if not 0 <= i < self.num_experts:
                raise IndexError(
                    f"expert {i} out of range: store {self.path} has {self.num_experts}"
                )
        return self.path / _expert_name(self._indices[i])

    def expert(self, i: int) -> np.memmap:
        """The i-th expert, memory-mapped read-only: float32 (epochs + 1, P)."""
        i = int(i)
        if i < 0:
            i += self.num_experts
        mm = self._cache.get(i)
        if mm is not None:
            return mm
        path = self._file(i)
        try:
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"expert file {path} is missing") from e
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"corrupt expert file {path}: {e}") from e
        want = (self.epochs + 1, self.num_params)
        if mm.shape != want or mm.dtype != np.float32:
            raise ValueError(
                f"corrupt expert file {path}: {mm.dtype} {mm.shape}, expected float32 {want}"
            )
        self._cache[i] = mm
        return mm

    def params(self, i: int, epoch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Flat parameters of expert ``i`` after ``epoch`` epochs (0 = initialisation).

        Returns:
            (P,) float32 tensor on ``device`` (default CPU); reads one row.
        """
        mm = self.expert(i)
        if not -mm.shape[0] <= int(epoch) < mm.shape[0]:
            raise IndexError(
                f"epoch {epoch} out of range: experts in {self.path} have snapshots 0..{self.epochs}"
            )
        t = torch.from_numpy(np.array(mm[int(epoch)]))
        if device is not None and torch.device(device).type != "cpu":
            return t.pin_memory().to(device, non_blocking=True)
        return t

    def pair(
        self, i: int, start: int, target: int, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(theta*_start, theta*_target)`` of expert ``i``: two (P,) float32 tensors."""
        return self.params(i, start, device), self.params(i, target, device)

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise ``ValueError`` unless ``model``'s parameters match the stored layout."""
        from mtt_fast.models.functional import layout

        lay = layout(model)
        name = type(model).__name__
        if lay.num_params != self.num_params:
            raise ValueError(
                f"store {self.path} was made for {_describe(self.meta)} with "
                f"{self.num_params} parameters; the model {name} has {lay.num_params}"
            )
        stored = self.meta.get("layout")
        if stored is not None and _jsonable(lay.to_dict()) != stored:
            raise ValueError(
                f"store {self.path} was made for {_describe(self.meta)}; the model {name} "
                f"has a different parameter layout: {_layout_diff(stored, _jsonable(lay.to_dict()))}"
            )


def _short(v: Any, n: int = 120) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _layout_num_params(lay: Any) -> int:
    d = _jsonable(lay)
    if isinstance(d, Mapping) and "shapes" in d:
        return int(sum(int(np.prod(s)) if len(s) else 1 for s in d["shapes"]))
    if isinstance(d, Mapping) and "num_params" in d:
        return int(d["num_params"])
    raise ValueError(f"cannot read a parameter count from layout {_short(d)}")


def _layout_diff(a: Mapping, b: Mapping) -> str:
    an, bn = a.get("names", []), b.get("names", [])
    ash, bsh = a.get("shapes", []), b.get("shapes", [])
    for k in range(max(len(an), len(bn))):
        x = (an[k], ash[k]) if k < len(an) else None
        y = (bn[k], bsh[k]) if k < len(bn) else None
        if x != y:
            return f"parameter #{k}: store {x}, model {y}"
    return "layouts differ"


def _clean_tmp(folder: Path) -> None:
    for p in folder.iterdir():
        m = _TMP_RE.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                p.unlink()
            except OSError:
                pass


# ---------------------------------------------------------------------- import


def _buffer_files(files: str | os.PathLike | Iterable) -> list[Path]:
    if isinstance(files, (str, os.PathLike)):
        p = Path(files)
        if p.is_dir():
            found = sorted(
                p.glob("replay_buffer_*.pt"),
                key=lambda q: int(re.sub(r"\D", "", q.stem) or 0),
            )
            if not found:
                raise FileNotFoundError(f"no replay_buffer_*.pt files in {p}")
            return found
        return [p]
    return [Path(f) for f in files]


def _load_buffer(path: Path) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"replay buffer {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"refusing to load replay buffer {path}: it needs unpickling of arbitrary "
            f"objects, which torch.load(weights_only=True) does not allow (a buffer holds "
            f"only lists of tensors). Detail: {str(e).splitlines()[0] if str(e) else e}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"cannot read replay buffer {path}: {e}") from e
    if not isinstance(obj, (list, tuple)):
        raise ValueError(
            f"replay buffer {path} holds a {type(obj).__name__}; expected a list of experts "
            "(each a list over epochs of lists of per-layer tensors)"
        )
    return list(obj)


def import_buffers(
    files: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    model_name: str,
    dataset: str,
    channels: int,
    num_classes: int,
    im_size: int | tuple[int, int],
    zca: bool = False,
    model_kwargs: Mapping | None = None,
    append: bool = False,
    **meta: Any,
) -> TrajectoryStore:
    """Convert the original code's ``replay_buffer_N.pt`` files into a store.

    Each file holds a list of experts; an expert is a list over epochs (``epochs + 1``
    snapshots) of lists of per-layer tensors in ``net.parameters()`` order. Files are
    loaded with ``torch.load(weights_only=True)``.

    Args:
        files: a file, a list of files, or a folder (all ``replay_buffer_*.pt`` in
            numeric order).
        out: the store folder to create.
        model_name: e.g. ``"ConvNet"``; the model built with
            ``get_model(model_name, channels, num_classes, im_size, **model_kwargs)``
            gives the layout every snapshot is checked against.
        dataset: dataset name recorded in the meta.
        channels, num_classes, im_size: as for ``get_model``.
        zca: whether the experts were trained on ZCA-whitened data.
        model_kwargs: extra constructor arguments of the model.
        append: add to an existing store at ``out`` (made for the same model and data)
            instead of refusing.
        **meta: recorded in ``meta.json`` (e.g. ``lr=0.01``, ``seed=0``, ``classes=[...]``).

    Returns:
        The store.

    Raises:
        ValueError: a file that needs arbitrary unpickling, a malformed buffer, or a layer
            whose shape differs from the model's (names the file, expert, epoch, layer).
        FileExistsError: ``out`` already holds a store and ``append`` is False.
    """
    from mtt_fast import models
    from mtt_fast.models import functional as fn

    paths = _buffer_files(files)
    im_size = (im_size, im_size) if isinstance(im_size, int) else tuple(im_size)
    net = models.get_model(model_name, channels, num_classes, im_size, **dict(model_kwargs or {}))
    lay = fn.layout(net)
    names, shapes = list(lay.names), [tuple(s) for s in lay.shapes]
    store: TrajectoryStore | None = None
    if (Path(out) / META).exists():
        if not append:
            raise FileExistsError(
                f"a trajectory store already exists at {out}; pass append=True to add to it"
            )
        store = TrajectoryStore.open(
            out,
            expect={"model": model_name, "dataset": dataset, "zca": zca, "layout": lay.to_dict()},
        )
    for path in paths:
        experts = _load_buffer(path)
        for e, expert in enumerate(experts):
            if not isinstance(expert, (list, tuple)) or len(expert) < 2:
                raise ValueError(
                    f"replay buffer {path}, expert {e}: expected a list of >= 2 snapshots, "
                    f"got {type(expert).__name__}"
                    + (f" of length {len(expert)}" if isinstance(expert, (list, tuple)) else "")
                )
            rows = []
            for t, snap in enumerate(expert):
                if not isinstance(snap, (list, tuple)) or len(snap) != len(names):
                    got = len(snap) if isinstance(snap, (list, tuple)) else type(snap).__name__
                    raise ValueError(
                        f"replay buffer {path}, expert {e}, epoch {t}: expected {len(names)} "
                        f"per-layer tensors for {model_name}, got {got}"
                    )
                for k, (p, name, shape) in enumerate(zip(snap, names, shapes)):
                    if not torch.is_tensor(p) or tuple(p.shape) != shape:
                        got = tuple(p.shape) if torch.is_tensor(p) else type(p).__name__
                        raise ValueError(
                            f"replay buffer {path}, expert {e}, epoch {t}: layer {k} ({name}) "
                            f"has shape {got}, {model_name} needs {shape}"
                        )
                rows.append(torch.cat([p.detach().reshape(-1).float() for p in snap]))
            traj = torch.stack(rows)
            if store is None:
                full = {
                    "model": model_name,
                    "model_spec": models.model_spec(
                        model_name, channels, num_classes, im_size, **dict(model_kwargs or {})
                    ),
                    "dataset": dataset,
                    "channels": channels,
                    "num_classes": num_classes,
                    "im_size": list(im_size),
                    "zca": bool(zca),
                    "preprocessing": {"zca": bool(zca), "zca_eps": 0.1 if zca else None},
                    "layout": lay.to_dict(),
                    "epochs": traj.shape[0] - 1,
                    "imported_from": [str(p) for p in paths],
                }
                full.update(meta)
                store = TrajectoryStore.create(out, full)
            if traj.shape[0] != store.epochs + 1:
                raise ValueError(
                    f"replay buffer {path}, expert {e}: {traj.shape[0]} snapshots, the other "
                    f"experts have {store.epochs + 1}"
                )
            store.add_expert(traj)
    if store is None:
        raise ValueError(f"no experts found in {', '.join(map(str, paths))}")
    return store
