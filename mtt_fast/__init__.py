"""mtt-fast: dataset distillation by Matching Training Trajectories (Cazenavette et al. 2022).

Stages: :func:`train_experts` -> :func:`distill` -> :func:`evaluate`; building blocks in
:mod:`mtt_fast.data`, :mod:`mtt_fast.models`, :mod:`mtt_fast.augment`,
:mod:`mtt_fast.matching`.
"""

from __future__ import annotations

import importlib

from mtt_fast import augment, backends, data, models  # noqa: F401
from mtt_fast._version import __version__  # noqa: F401

# Heavier stages load on first use so `import mtt_fast` stays light.
_LAZY = {
    "matching": ("mtt_fast.matching", None),
    "train_experts": ("mtt_fast.experts", "train_experts"),
    "import_buffers": ("mtt_fast.experts", "import_buffers"),
    "TrajectoryStore": ("mtt_fast.experts", "TrajectoryStore"),
    "distill": ("mtt_fast.distillation", "distill"),
    "DistillResult": ("mtt_fast.distillation", "DistillResult"),
    "evaluate": ("mtt_fast.evaluation", "evaluate"),
    "EvalReport": ("mtt_fast.evaluation", "EvalReport"),
    "run": ("mtt_fast.pipeline", "run"),
    "reproduce": ("mtt_fast.pipeline", "reproduce"),
}


def __getattr__(name: str):
    if name in _LAZY:
        mod_name, attr = _LAZY[name]
        mod = importlib.import_module(mod_name)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'mtt_fast' has no attribute {name!r}")
