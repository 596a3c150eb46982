"""The synthetic set as a type: what distillation produces and evaluation consumes.

:class:`SyntheticSet` holds the images (in the data's processed space), labels, the
learned lr, the architecture they were distilled for (name and options), the preprocessing
and the configuration. ``save`` / ``load`` are the one file format shared by ``distill``,
``mtt_fast.evaluate`` and ``mtt-fast eval``: a ``torch.save`` of a plain dict of tensors
and JSON-like values, read back with ``weights_only=True`` (no code is ever unpickled).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtt_fast._version import __version__
from mtt_fast.augment import DEFAULT_STRATEGY, parse_strategy
from mtt_fast.utils import load_torch_file

__all__ = ["SyntheticSet", "load_synthetic"]


@dataclass
class SyntheticSet:
    """A distilled set.

    Attributes:
        images: (n, C, H, W) float32, processed space (normalised or ZCA-whitened).
        labels: (n,) int64 or (n, K) float soft labels.
        lr: the learned student lr (the evaluation's training lr).
        dataset: the dataset name.
        zca: whether the images live in ZCA space.
        ipc: images per class.
        model: the architecture distilled for.
        model_kwargs: its ConvNet options.
        config: the run's flat configuration (``Config.to_dict()``), or ``{}``.
        dataset_info: classes, shapes and normalisation of the data.
        iteration: distillation iterations done.
        best: the best periodic evaluation, or None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    dataset: str | None = None
    zca: bool = False
    ipc: int | None = None
    model: str = "ConvNet"
    model_kwargs: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    dataset_info: dict = field(default_factory=dict)
    iteration: int = 0
    best: dict | None = None

    @property
    def dsa_strategy(self) -> str | None:
        """The DSA strategy the set was distilled with (``None``: none); all six groups
        when the file does not record it."""
        strategy = self.config.get("dsa_strategy", DEFAULT_STRATEGY)
        return strategy if strategy and parse_strategy(strategy) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images.detach().cpu().clone(),
            "labels": self.labels.detach().cpu().clone(),
            "lr": float(self.lr),
            "dataset": self.dataset,
            "zca": bool(self.zca),
            "ipc": self.ipc,
            "model": self.model,
            "model_kwargs": dict(self.model_kwargs),
            "iteration": int(self.iteration),
            "config": dict(self.config),
            "dataset_info": dict(self.dataset_info),
            "best": self.best,
            "version": __version__,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a temp file moved over ``path``)."""
        from mtt_fast.utils import atomic_save

        return atomic_save(self.to_dict(), path)

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "synthetic set") -> SyntheticSet:
        missing = [k for k in ("images", "labels") if k not in d]
        if missing:
            raise ValueError(f"{where} lacks key(s) {missing}; has {sorted(d)}")
        return cls(
            images=d["images"],
            labels=d["labels"],
            lr=float(d["lr"]) if d.get("lr") is not None else float("nan"),
            dataset=d.get("dataset"),
            zca=bool(d.get("zca", False)),
            ipc=d.get("ipc"),
            model=d.get("model") or "ConvNet",
            model_kwargs=dict(d.get("model_kwargs") or {}),
            config=dict(d.get("config") or {}),
            dataset_info=dict(d.get("dataset_info") or {}),
            iteration=int(d.get("iteration") or 0),
            best=d.get("best"),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> SyntheticSet:
        """Read a set written by :meth:`save` (or by earlier versions).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a synthetic set (the message names the file).
        """
        return cls.from_dict(load_synthetic(path), where=f"synthetic set {path}")


def load_synthetic(path: str | os.PathLike) -> dict[str, Any]:
    """The raw dict of a synthetic-set file (``torch.load(weights_only=True)`` on the CPU).

    Raises:
        FileNotFoundError / ValueError: missing file, not a torch file of a dict, or
            missing keys (the message names the file).
    """
    path = Path(path)
    obj = load_torch_file(path, "synthetic set file")
    if not isinstance(obj, Mapping):
        raise ValueError(f"synthetic set {path} holds a {type(obj).__name__}, expected a dict")
    missing = [k for k in ("images", "labels") if k not in obj]
    if missing:
        raise ValueError(f"synthetic set {path} lacks key(s) {missing}; has {sorted(obj)}")
    return dict(obj)
