"""Import the original code's expert files (``replay_buffer_N.pt``) into a store.

The original ``buffer.py`` saves a list of experts per file; an expert is a list over
epochs (``epochs + 1`` snapshots) of lists of per-layer tensors in ``net.parameters()``
order. Files are loaded with ``torch.load(weights_only=True)``: no code runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mtt_fast.experts.meta import ExpertTraining, Preprocessing, StoreMeta
from mtt_fast.experts.store import META, TrajectoryStore
from mtt_fast.utils import load_torch_file

__all__ = ["import_buffers"]

_TRAINING_KEYS = ("lr", "momentum", "weight_decay", "batch_size", "dsa_strategy", "lr_decay",
                  "seed")  # fmt: skip


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
    obj = load_torch_file(path, "replay buffer of the original code (lists of tensors)")
    if not isinstance(obj, (list, tuple)):
        raise ValueError(
            f"replay buffer {path} holds a {type(obj).__name__}; expected a list of experts "
            "(each a list over epochs of lists of per-layer tensors)"
        )
    return list(obj)


def _shape(dataset: str, channels, num_classes, im_size) -> tuple[int, int, tuple[int, int]]:
    if channels is None or num_classes is None or im_size is None:
        from mtt_fast.data import registry

        known = None
        try:
            known = registry.info(dataset)
        except ValueError:
            pass
        if known is None or known.shape is None:
            what = "is not in the dataset registry" if known is None else "has no fixed shape"
            raise ValueError(f"dataset {dataset!r} {what}: give channels, num_classes and im_size")
        channels = known.channels if channels is None else channels
        num_classes = known.num_classes if num_classes is None else num_classes
        im_size = known.im_size if im_size is None else im_size
    size = (im_size, im_size) if isinstance(im_size, int) else tuple(im_size)
    return int(channels), int(num_classes), size


def _meta_for(spec, lay, epochs, dataset, zca, paths, meta: Mapping[str, Any]) -> StoreMeta:
    extra = dict(meta)
    training = {k: extra.pop(k) for k in _TRAINING_KEYS if k in extra}
    if "dsa" in extra:  # the flat spelling: dsa=False means no augmentation
        dsa = extra.pop("dsa")
        if not dsa:
            training["dsa_strategy"] = "none"
    classes = extra.pop("classes", None)
    prep = {k: extra.pop(k) for k in ("zca_eps", "mean", "std") if k in extra}
    prep.setdefault("zca_eps", 0.1 if zca else None)
    if not zca and ("mean" not in prep or "std" not in prep):
        from mtt_fast.data import registry

        try:
            known = registry.info(dataset)
        except ValueError:
            known = None
        if known is not None and known.mean is not None:  # what the original normalised by
            prep.setdefault("mean", known.mean)
            prep.setdefault("std", known.std)
    return StoreMeta(
        epochs=epochs,
        layout=lay,
        model=spec,
        dataset=dataset,
        classes=classes,
        preprocessing=Preprocessing(zca=bool(zca), **prep),
        training=ExpertTraining(**training),
        imported_from=tuple(str(p) for p in paths),
        extra=extra,
    )


def import_buffers(
    files: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    model_name: str,
    dataset: str,
    channels: int | None = None,
    num_classes: int | None = None,
    im_size: int | Sequence[int] | None = None,
    zca: bool = False,
    model_kwargs: Mapping | None = None,
    append: bool = False,
    **meta: Any,
) -> TrajectoryStore:
    """Convert the original code's ``replay_buffer_N.pt`` files into a store.

    Args:
        files: a file, a list of files, or a folder (all ``replay_buffer_*.pt`` in
            numeric order).
        out: the store folder to create.
        model_name: e.g. ``"ConvNet"``; the model of
            ``model_spec(model_name, channels, num_classes, im_size, **model_kwargs)``
            gives the layout every snapshot is checked against, and its spec is stored.
        dataset: dataset name recorded in the meta (canonical when the registry knows it).
        channels, num_classes, im_size: the model's input and output; default: the
            dataset's, from :mod:`mtt_fast.data.registry` (e.g. 3, 10, 32 for CIFAR-10).
        zca: whether the experts were trained on ZCA-whitened data.
        model_kwargs: ConvNet-family options of the model (``width``, ``depth``, ...).
        append: add to an existing store at ``out`` (made for the same model and data)
            instead of refusing.
        **meta: facts to record: the training settings (``lr``, ``momentum``,
            ``weight_decay``, ``batch_size``, ``dsa_strategy``, ``lr_decay``, ``seed``;
            e.g. ``lr=0.01``), ``classes``, ``zca_eps`` / ``mean`` / ``std``, and anything
            else JSON-able (kept under ``extra``).

    Returns:
        The store.

    Raises:
        ValueError: a file that needs arbitrary unpickling, a malformed buffer, a layer
            whose shape differs from the model's (names the file, expert, epoch, layer),
            or no shape for a dataset the registry does not know.
        FileExistsError: ``out`` already holds a store and ``append`` is False.
    """
    from mtt_fast import models

    paths = _buffer_files(files)
    channels, num_classes, size = _shape(dataset, channels, num_classes, im_size)
    spec = models.model_spec(model_name, channels, num_classes, size, **dict(model_kwargs or {}))
    lay = models.layout(models.from_spec(spec))
    names, shapes = list(lay.names), [tuple(s) for s in lay.shapes]
    store: TrajectoryStore | None = None
    if (Path(out) / META).exists():
        if not append:
            raise FileExistsError(
                f"a trajectory store already exists at {out}; pass append=True to add to it"
            )
        store = TrajectoryStore.open(
            out, expect={"model_spec": spec, "dataset": dataset, "zca": zca, "layout": lay}
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
                store = TrajectoryStore.create(
                    out, _meta_for(spec, lay, traj.shape[0] - 1, dataset, zca, paths, meta)
                )
            if traj.shape[0] != store.epochs + 1:
                raise ValueError(
                    f"replay buffer {path}, expert {e}: {traj.shape[0]} snapshots, the other "
                    f"experts have {store.epochs + 1}"
                )
            store.add_expert(traj)
    if store is None:
        raise ValueError(f"no experts found in {', '.join(map(str, paths))}")
    return store
