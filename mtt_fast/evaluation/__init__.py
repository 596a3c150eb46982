"""Evaluation: the paper's protocol (:mod:`.protocol`), the coreset baselines
(:mod:`.baselines`) and the published references to report beside a run (:mod:`.published`).
"""

from __future__ import annotations

from mtt_fast.evaluation.baselines import BASELINE_LR, CORESET_KINDS, coreset, evaluate_baselines
from mtt_fast.evaluation.protocol import EvalReport, evaluate
from mtt_fast.evaluation.published import published
from mtt_fast.synthetic import SyntheticSet, load_synthetic

__all__ = [
    "EvalReport",
    "evaluate",
    "coreset",
    "evaluate_baselines",
    "published",
    "load_synthetic",
    "SyntheticSet",
    "BASELINE_LR",
    "CORESET_KINDS",
]
