"""Experts: train them (:func:`train_experts`, the original ``buffer.py``), keep their
trajectories (:class:`TrajectoryStore`, described by a typed :class:`StoreMeta`), and
import the original code's ``replay_buffer_N.pt`` files (:func:`import_buffers`).

Example:
    >>> store = train_experts(dataset="digits", num_experts=2, epochs=10, out="buffers")
    >>> store.meta.model_name, store.meta.zca, store.epochs
    >>> net = store.build_model()                       # from the stored model spec
    >>> start, target = store.pair(0, 2, 4)             # two (P,) float32 rows
"""

from __future__ import annotations

from mtt_fast.experts.importer import import_buffers
from mtt_fast.experts.meta import (
    FORMAT,
    FORMAT_VERSION,
    ExpertTraining,
    Preprocessing,
    StoreMeta,
)
from mtt_fast.experts.store import META, TrajectoryStore
from mtt_fast.experts.train import train_experts

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "META",
    "ExpertTraining",
    "Preprocessing",
    "StoreMeta",
    "TrajectoryStore",
    "import_buffers",
    "train_experts",
]
