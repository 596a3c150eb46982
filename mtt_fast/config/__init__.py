"""One typed configuration (:class:`Config` with ``experts`` / ``distill`` / ``eval``
sections), the paper's presets, and the one place that reconciles a configuration with a
store or a checkpoint (:mod:`mtt_fast.config.reconcile`).

``DistillConfig`` is the earlier name of :class:`Config` and stays as an alias.
"""

from __future__ import annotations

from mtt_fast.config.presets import PRESETS, canonical_dataset, known_presets, preset
from mtt_fast.config.reconcile import reconcile_checkpoint, reconcile_store, store_model_kwargs
from mtt_fast.config.schema import (
    EXPERT_LR,
    INITS,
    MATCHING_MODES,
    SECTIONS,
    Config,
    DistillSettings,
    EvalSettings,
    ExpertSettings,
    field_names,
    field_specs,
)

DistillConfig = Config  # the earlier name

__all__ = [
    "Config",
    "DistillConfig",
    "ExpertSettings",
    "DistillSettings",
    "EvalSettings",
    "SECTIONS",
    "EXPERT_LR",
    "INITS",
    "MATCHING_MODES",
    "preset",
    "PRESETS",
    "known_presets",
    "canonical_dataset",
    "field_names",
    "field_specs",
    "reconcile_store",
    "reconcile_checkpoint",
    "store_model_kwargs",
]
