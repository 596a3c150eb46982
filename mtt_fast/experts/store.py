"""Expert trajectories on disk: :class:`TrajectoryStore`.

A store is a folder::

    meta.json            :class:`~mtt_fast.experts.meta.StoreMeta` as JSON: model spec,
                         parameter layout, dataset, preprocessing, training, epochs
    expert_00000.npy     float32 (epochs + 1, P): flat parameters before training and
    expert_00001.npy     after every epoch, in ``model.named_parameters()`` order
    ...

Each file is written whole to a temporary file in the same folder whose name carries the
writer's pid, fsynced and then moved into place (:func:`mtt_fast.utils.atomic_publish`);
an expert is published under a name no other writer holds. A killed run therefore leaves
only whole experts (plus, at worst, a temporary file that is ignored and removed by the
next :meth:`TrajectoryStore.open` once its writer is gone). Experts are read with
``np.load(mmap_mode="r")``: sampling a ``(start, target)`` pair reads two rows.

Several processes may fill one store at once (``mtt-fast buffer`` twice, or the ranks of
a torchrun job): before training expert ``i`` a process *claims* it with an exclusive lock
on ``expert_0000i.claim`` (:meth:`TrajectoryStore.claim`). The operating system drops the
lock when its holder dies, so a killed claimant's expert is simply claimed again by the
next process that looks; expert ``i`` is always trained from seed ``seed + i``, whoever
trains it, so the store ends with exactly the asked experts whatever the interleaving.

Every expert is verified when the store is opened (shape from the file's size, dtype, a
finite last snapshot): a damaged file is named at once, not when it is sampled mid-run.

Stores written by earlier versions (``meta.json`` format version 1) open as they are.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtt_fast.experts.meta import (
    FORMAT,
    FORMAT_VERSION,
    StoreMeta,
    _describe,
    _first_layout_difference,
)
from mtt_fast.utils import atomic_publish, load_numpy_file, remove_dead_temps, to_jsonable

__all__ = ["TrajectoryStore", "Claim", "FORMAT", "FORMAT_VERSION", "META"]

META = "meta.json"
_EXPERT_RE = re.compile(r"^expert_(\d{5,})\.npy$")


def _expert_name(i: int) -> str:
    return f"expert_{i:05d}.npy"


def _claim_name(i: int) -> str:
    return f"expert_{i:05d}.claim"


_CLAIM_RE = re.compile(r"^expert_(\d{5,})\.claim$")


class Claim:
    """A held claim on one expert index (see :meth:`TrajectoryStore.claim`)."""

    def __init__(self, index: int, path: Path, fd: int) -> None:
        self.index, self.path, self._fd = index, path, fd

    def touch(self) -> None:
        """Mark the claim as alive now (its mtime), for a human looking at the folder."""
        try:
            os.utime(self._fd)
        except OSError:
            pass

    def release(self) -> None:
        """Give the claim up (after the expert is published, or on failure)."""
        if self._fd < 0:
            return
        try:
            self.path.unlink()  # while still locked: nobody holds a lock on a stale inode
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock(path: Path) -> int | None:
    """An exclusive, non-blocking lock on the file ``path`` (created if needed): its fd, or
    None if another process holds it. Retries when the file was replaced meanwhile."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # locked a file its holder had just removed: try the current one


def _next_expert(p: Path) -> Path:
    return p.with_name(_expert_name(int(_EXPERT_RE.match(p.name).group(1)) + 1))


def _short(v: Any, n: int = 120) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


class TrajectoryStore:
    """A folder of expert trajectories, read lazily.

    Use :meth:`create` for a new store and :meth:`open` for an existing one.

    Attributes:
        path: the folder.
        meta: its :class:`~mtt_fast.experts.meta.StoreMeta` (``meta["lr"]`` /
            ``meta.get("zca")`` still read the flat keys of format version 1).
    """

    def __init__(self, path: str | os.PathLike, meta: StoreMeta | Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta if isinstance(meta, StoreMeta) else StoreMeta.from_dict(meta)
        self._cache: dict[int, np.memmap] = {}
        self._indices: list[int] = []
        self.refresh()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls, path: str | os.PathLike, meta: StoreMeta | Mapping[str, Any]
    ) -> TrajectoryStore:
        """Make a new, empty store at ``path`` (created if needed).

        Args:
            path: folder; must not already hold a ``meta.json``.
            meta: a :class:`~mtt_fast.experts.meta.StoreMeta`, or a flat dict in the
                keys of format version 1 (``epochs``, ``layout`` or ``num_params``,
                ``model``, ``model_spec``, ``dataset``, ``zca``, ``lr``, ...).

        Returns:
            The open, empty store.

        Raises:
            FileExistsError: a store already exists at ``path`` (also when another
                process creates it at the same moment).
            ValueError: ``meta`` lacks ``epochs`` or the parameter layout, or holds an
                invalid value (named).
        """
        path = Path(path)
        if (path / META).exists():
            raise FileExistsError(f"a trajectory store already exists at {path}")
        if not isinstance(meta, StoreMeta):
            meta = StoreMeta.from_dict(meta)
        path.mkdir(parents=True, exist_ok=True)
        text = meta.to_json().encode("utf-8")
        try:
            atomic_publish(lambda f: f.write(text), path / META, overwrite=False)
        except FileExistsError:
            raise FileExistsError(f"a trajectory store already exists at {path}") from None
        return cls(path, meta)

    @classmethod
    def open(
        cls, path: str | os.PathLike, expect: StoreMeta | Mapping[str, Any] | None = None
    ) -> TrajectoryStore:
        """Open an existing store, optionally checking it was made for what is asked.

        Temporary files left by a killed writer are removed (only those whose process is
        gone) and never counted as experts. ``meta.json`` of format version 1 is read as
        it is (converted in memory; the file is not rewritten).

        Args:
            path: the store folder.
            expect: what the store must have been made for: a
                :class:`~mtt_fast.experts.meta.StoreMeta` (compared by
                :meth:`StoreMeta.differences`), or a mapping of flat keys (``model``,
                ``model_spec``, ``dataset``, ``zca``, ``num_params``, ``layout``
                (``ParamLayout`` or dict), ``epochs``, ``lr``, ...; values compare after a
                JSON round trip, so tuples equal lists).

        Raises:
            FileNotFoundError: no folder or no ``meta.json`` (names the path).
            ValueError: unreadable or invalid ``meta.json``, a newer format (names the
                file), or a mismatch with ``expect`` (names both sides and the keys).
        """
        path = Path(path)
        mpath = path / META
        if not path.is_dir():
            raise FileNotFoundError(f"no trajectory store at {path} (folder does not exist)")
        if not mpath.is_file():
            raise FileNotFoundError(f"no trajectory store at {path}: {mpath} is missing")
        try:
            raw = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"corrupt store metadata {mpath}: {e}") from e
        try:
            meta = StoreMeta.from_dict(raw)
        except ValueError as e:
            raise ValueError(f"store metadata {mpath}: {e}") from None
        remove_dead_temps(path)
        store = cls(path, meta)
        if expect is not None:
            store.check(expect)
        store.verify()
        return store

    def verify(self) -> None:
        """Check every expert file: its size and header give float32 ``(epochs + 1, P)``
        and its last snapshot is finite.

        Raises:
            ValueError: names the first damaged file and what to do about it.
        """
        for i in range(self.num_experts):
            self.expert(i)

    def check(self, expect: StoreMeta | Mapping[str, Any]) -> None:
        """Raise ``ValueError`` if the store was made for something else than ``expect``.

        Args:
            expect: a :class:`~mtt_fast.experts.meta.StoreMeta` or a mapping of flat keys
                (see :meth:`open`).
        """
        if isinstance(expect, StoreMeta):
            diffs = self.meta.differences(expect)
            asked = expect.describe()
        else:
            exp = to_jsonable(dict(expect))
            if isinstance(exp.get("dataset"), str):
                from mtt_fast.data import registry

                try:
                    exp["dataset"] = registry.canonical(exp["dataset"])
                except ValueError:
                    pass
            diffs = []
            for k, v in exp.items():
                have = self.meta.get(k)
                same = bool(have) == bool(v) if k == "zca" else have == v
                if not same:
                    diffs.append((k, have, v))
            view = self.meta.legacy_view()
            model = exp.get("model") or (exp.get("model_spec") or {}).get("name")
            asked = _describe(
                model or view["model"], exp.get("dataset", view["dataset"]),
                exp.get("zca", view["zca"]),
            )  # fmt: skip
        if diffs:
            text = "; ".join(f"{k}: store has {_short(a)}, asked {_short(b)}" for k, a, b in diffs)
            raise ValueError(
                f"store {self.path} was made for {self.meta.describe()}; asked for {asked} ({text})"
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
        return self.meta.epochs

    @property
    def num_params(self) -> int:
        return self.meta.num_params

    @property
    def layout(self):
        """The flat parameter layout (``mtt_fast.models.functional.ParamLayout``) or None."""
        return self.meta.layout

    def __len__(self) -> int:
        return self.num_experts

    def __repr__(self) -> str:
        return (
            f"TrajectoryStore({str(self.path)!r}, {self.meta.describe()}, "
            f"experts={self.num_experts}, epochs={self.epochs}, params={self.num_params})"
        )

    # ------------------------------------------------------------------ writing
    def add_expert(self, traj: torch.Tensor | np.ndarray, index: int | None = None) -> int:
        """Write one expert atomically, under ``index`` or else the first free index.

        Args:
            traj: (epochs + 1, P) flat parameters (any float dtype; stored as float32).
            index: the index to publish under (a claimed one, see :meth:`claim`); an
                existing expert there is never replaced (``FileExistsError``).

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
        if index is None:
            i = (self._indices[-1] + 1) if self._indices else 0
        else:
            i = int(index)
        final = atomic_publish(
            lambda f: np.save(f, arr),
            self.path / _expert_name(i),
            overwrite=False,  # never replaces a concurrent writer's expert
            next_name=_next_expert if index is None else None,
        )
        self.refresh()
        return int(_EXPERT_RE.match(final.name).group(1))

    # ------------------------------------------------------------------ claims
    def claim(self, i: int) -> Claim | None:
        """Claim expert index ``i`` for training, or None if another live process holds it
        or it is already published.

        The claim is an exclusive lock (``flock``) on ``expert_0000i.claim``; it lasts until
        :meth:`Claim.release` or the death of this process, whichever comes first, so a
        killed claimant's index can be claimed again at once.
        """
        path = self.path / _claim_name(int(i))
        fd = _lock(path)
        if fd is None:
            return None
        claim = Claim(int(i), path, fd)
        if (self.path / _expert_name(int(i))).exists():  # finished while we looked
            claim.release()
            return None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        return claim

    def claimed(self) -> set[int]:
        """Indices claimed by live processes (stale claim files of dead ones are removed)."""
        live = set()
        for p in self.path.iterdir():
            m = _CLAIM_RE.match(p.name)
            if not m:
                continue
            fd = _lock(p)
            if fd is None:
                live.add(int(m.group(1)))
            else:  # its holder is gone
                Claim(int(m.group(1)), p, fd).release()
        return live

    def next_to_train(self, want: int) -> Claim | int | None:
        """What this process should do to bring the store to ``want`` experts.

        Returns:
            A :class:`Claim` on the lowest index neither published nor claimed: train it
            (from seed ``seed + index``), publish it under that index, release the claim.
            An ``int`` (how many experts other live processes are still training): wait
            and ask again. ``None``: the store holds ``want`` experts.
        """
        while True:
            self.refresh()
            have = set(self._indices)
            if len(have) >= want:
                return None
            busy = self.claimed() - have
            if len(have) + len(busy) >= want:
                return len(busy)
            i = next(j for j in range(len(have) + len(busy) + 1) if j not in have | busy)
            claim = self.claim(i)
            if claim is not None:
                return claim

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
        fix = "delete it and run `mtt-fast buffer` again to retrain it"
        try:
            mm = load_numpy_file(path, "expert trajectory (.npy)", mmap_mode="r")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"expert file {path} is missing") from e
        except ValueError as e:
            raise ValueError(f"damaged expert file: {e}; {fix}") from None
        want = (self.epochs + 1, self.num_params)
        if not isinstance(mm, np.ndarray) or mm.shape != want or mm.dtype != np.float32:
            got = f"{mm.dtype} {mm.shape}" if isinstance(mm, np.ndarray) else "an .npz archive"
            raise ValueError(
                f"damaged expert file {path}: {got}, expected float32 {want}; {fix}"
            )
        if not np.isfinite(mm[-1]).all():
            raise ValueError(
                f"damaged expert file {path}: its last snapshot has non-finite values; {fix}"
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
                f"store {self.path} was made for {self.meta.describe()} with "
                f"{self.num_params} parameters; the model {name} has {lay.num_params}"
            )
        stored = self.meta.layout
        if stored is not None and lay != stored:
            have, got = _first_layout_difference(stored, lay)
            raise ValueError(
                f"store {self.path} was made for {self.meta.describe()}; the model {name} "
                f"has a different parameter layout: parameter #{(have or got)[0]}: "
                f"store {have and tuple(have[1:])}, model {got and tuple(got[1:])}"
            )

    def build_model(self) -> torch.nn.Module:
        """A fresh network of the store's model, built from its stored spec with
        :func:`mtt_fast.models.from_spec` and checked against the stored layout.

        Seed torch yourself for reproducible (unused by matching) initial weights.

        Raises:
            ValueError: the store records no model spec, or one the registry cannot
                build, or the built model does not match the stored layout.
        """
        from mtt_fast.models import from_spec

        spec = self.meta.model
        if spec is None:
            raise ValueError(f"store {self.path} records no model spec to build the model from")
        try:
            net = from_spec(spec)
        except ValueError as e:
            raise ValueError(f"store {self.path}: cannot build its model: {e}") from None
        self.check_model(net)
        return net
