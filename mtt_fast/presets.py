"""The paper's distillation hyper-parameters per (dataset, IPC) and the run configuration.

``preset(dataset, ipc, **overrides) -> DistillConfig``. The CIFAR-10 / CIFAR-100 /
Tiny ImageNet rows are Table 6 of Cazenavette et al. (CVPR 2022, appendix); ``digits`` and
``mnist`` are small settings of ours that run in minutes on a CPU.

========== ==== ========= ============= =============== ====== ====== ========== ========= ===
dataset    IPC  model     syn_steps     expert_epochs   max    lr_img lr_lr      lr_teach  ZCA
                                                        start                    / batch
========== ==== ========= ============= =============== ====== ====== ========== ========= ===
CIFAR-10   1    ConvNet   50            2               2      100    1e-7       0.01/all  Y
CIFAR-10   10   ConvNet   30            2               20     100    1e-5       0.001/all Y
CIFAR-10   50   ConvNet   30            2               40     1000   1e-5       0.001/all N
CIFAR-100  1    ConvNet   20            3               20     1000   1e-5       0.01/all  Y
CIFAR-100  10   ConvNet   20            2               20     1000   1e-5       0.01/all  N
CIFAR-100  50   ConvNet   80            2               40     1000   1e-5       0.01/125  Y
Tiny       1    ConvNetD4 10            2               10     1e4    1e-4       0.01/all  N
Tiny       10   ConvNetD4 20            2               40     1e4    1e-4       0.01/200  N
Tiny       50   ConvNetD4 20            2               40     1e4    1e-4       0.01/300  N
========== ==== ========= ============= =============== ====== ====== ========== ========= ===

A dataset with no row for the IPC asked for takes the row of the nearest IPC; datasets
without rows of their own borrow a close relative's (``fashionmnist`` -> ``mnist``,
``svhn`` / ``cifar10-subset`` -> ``cifar10``); any other name gets generic CIFAR-10-like
values without ZCA.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from mtt_fast.augment import DEFAULT_STRATEGY, parse_strategy

__all__ = ["DistillConfig", "preset", "PRESETS", "canonical_dataset", "known_presets"]

MATCHING_MODES = ("unroll", "checkpoint")
EXPERT_LR = 0.01  # buffer.py's --lr_teacher default: every expert, every dataset
INITS = ("real", "noise")


@dataclass(frozen=True)
class DistillConfig:
    """Everything that defines a distillation run (and the experts it needs).

    Attributes:
        dataset: dataset name as understood by :func:`mtt_fast.data.prepare`.
        ipc: synthetic images per class.
        model: architecture name for :func:`mtt_fast.models.get_model` (must be the
            experts' architecture).
        model_kwargs: extra keyword arguments for ``get_model`` (e.g. ``{"width": 32}``).
        iterations: distillation iterations (the paper: 5000).
        syn_steps: student SGD steps per iteration (N).
        expert_epochs: expert epochs the student must match (M).
        max_start_epoch: start epochs are drawn uniformly from ``[0, max_start_epoch)``.
        lr_img: SGD (momentum 0.5) learning rate of the pixels.
        lr_lr: SGD (momentum 0.5) learning rate of the learnable student lr.
        lr_teacher: initial value of the learnable student lr (the original's
            ``--lr_teacher`` of distill.py). It does not change the experts.
        batch_syn: synthetic mini-batch per student step; ``None`` = the whole set.
        zca: ZCA-whiten the data (kornia ``eps=0.1``) instead of mean/std normalisation.
        dsa_strategy: DSA groups joined by ``_``; ``"none"`` disables augmentation.
        init: ``"real"`` (random real images of each class) or ``"noise"`` (N(0, 1)).
        matching: ``"checkpoint"`` (memory-efficient exact gradient) or ``"unroll"``.
        segment: steps recomputed together in checkpoint mode (int >= 1 or ``"auto"``).
        store_on: where checkpoint mode keeps the per-step flat parameter vectors:
            ``"device"`` or ``"host"`` (pinned host memory; for large models).
        eval_it: evaluate (and checkpoint) every ``eval_it`` iterations; 0 = only at the end.
        checkpoint_it: checkpoint interval if different from ``eval_it`` (``None`` = same).
        num_eval: models trained per evaluation (0 disables evaluation).
        epoch_eval_train: epochs of each evaluation model (the paper: 1000).
        eval_models: architectures evaluated periodically (default: ``model`` only).
        log_every: iterations between host reads of the loss (progress bar / metrics).
        num_experts: experts to train when a run also trains its buffers.
        buffer_epochs: epochs per expert when a run trains its buffers.
        buffer_batch: the experts' real mini-batch (the paper: 256).
        buffer_lr: the experts' SGD lr (the original buffer.py's ``--lr_teacher``, 0.01
            for every dataset whatever IPC the experts later serve; a store does not
            depend on the IPC).
        seed: seed of every generator of the run.
    """

    dataset: str = "digits"
    ipc: int = 1
    model: str = "ConvNet"
    model_kwargs: dict = field(default_factory=dict)
    iterations: int = 5000
    syn_steps: int = 20
    expert_epochs: int = 2
    max_start_epoch: int = 20
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.01
    batch_syn: int | None = None
    zca: bool = False
    dsa_strategy: str = DEFAULT_STRATEGY
    init: str = "real"
    matching: str = "checkpoint"
    segment: int | str = 1
    store_on: str = "device"
    eval_it: int = 500
    checkpoint_it: int | None = None
    num_eval: int = 5
    epoch_eval_train: int = 1000
    eval_models: tuple[str, ...] = ()
    log_every: int = 10
    num_experts: int = 100
    buffer_epochs: int = 50
    buffer_batch: int = 256
    buffer_lr: float = EXPERT_LR
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"DistillConfig.{name} must be {want}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not isinstance(self.dataset, str) or not self.dataset:
            raise bad("dataset", "a non-empty string")
        if not isinstance(self.model, str) or not self.model:
            raise bad("model", "a non-empty string")
        if not isinstance(self.model_kwargs, dict):
            raise bad("model_kwargs", "a dict")
        for name in ("ipc", "syn_steps", "expert_epochs", "max_start_epoch", "log_every"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise bad(name, "an int >= 1")
        for name in ("iterations", "eval_it", "num_eval", "seed"):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                raise bad(name, "an int >= 0")
        for name in ("num_experts", "buffer_epochs", "buffer_batch", "epoch_eval_train"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise bad(name, "an int >= 1")
        for name in ("lr_img", "lr_lr", "lr_teacher"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise bad(name, "a positive finite number")
            if not math.isfinite(v) or v <= 0:
                raise bad(name, "a positive finite number")
        if (
            isinstance(self.buffer_lr, bool)
            or not isinstance(self.buffer_lr, (int, float))
            or not math.isfinite(self.buffer_lr)
            or self.buffer_lr <= 0
        ):
            raise bad("buffer_lr", "a positive finite number")
        if self.batch_syn is not None and (not is_int(self.batch_syn) or self.batch_syn < 1):
            raise bad("batch_syn", "None (the whole set) or an int >= 1")
        if self.checkpoint_it is not None and (
            not is_int(self.checkpoint_it) or self.checkpoint_it < 1
        ):
            raise bad("checkpoint_it", "None or an int >= 1")
        if not isinstance(self.zca, bool):
            raise bad("zca", "a bool")
        if self.init not in INITS:
            raise bad("init", f"one of {INITS}")
        if self.matching not in MATCHING_MODES:
            raise bad("matching", f"one of {MATCHING_MODES}")
        if not (self.segment == "auto" or (is_int(self.segment) and self.segment >= 1)):
            raise bad("segment", "an int >= 1 or 'auto'")
        if self.store_on not in ("device", "host"):
            raise bad("store_on", "'device' or 'host'")
        if not isinstance(self.dsa_strategy, str):
            raise bad("dsa_strategy", "a string")
        try:
            parse_strategy(self.dsa_strategy)
        except ValueError as e:
            raise ValueError(f"DistillConfig.dsa_strategy: {e}") from None
        if isinstance(self.eval_models, str) or not all(
            isinstance(m, str) and m for m in self.eval_models
        ):
            raise bad("eval_models", "a tuple of model names")

    @property
    def dsa(self) -> str | None:
        """The DSA strategy for :func:`mtt_fast.matching.match` (``None`` when disabled)."""
        return self.dsa_strategy if parse_strategy(self.dsa_strategy) else None

    @property
    def expert_lr(self) -> float:
        """The experts' SGD lr (``buffer_lr``; independent of ``lr_teacher``)."""
        return self.buffer_lr

    @property
    def checkpoint_every(self) -> int:
        """Iterations between checkpoints (0 = only at the end)."""
        return self.checkpoint_it if self.checkpoint_it is not None else self.eval_it

    @property
    def models_to_eval(self) -> tuple[str, ...]:
        return self.eval_models or (self.model,)

    @property
    def min_epochs(self) -> int:
        """Epochs an expert trajectory needs: the last start epoch plus ``expert_epochs``."""
        return self.max_start_epoch - 1 + self.expert_epochs

    def to_dict(self) -> dict:
        """Plain-JSON form (tuples become lists)."""
        d = asdict(self)
        d["eval_models"] = list(self.eval_models)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DistillConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "eval_models" in kw:
            kw["eval_models"] = tuple(kw["eval_models"])
        return cls(**kw)

    def replace(self, **changes: Any) -> DistillConfig:
        """A copy with ``changes`` (validated)."""
        return replace(self, **_fix(changes))


def _fix(kw: dict) -> dict:
    kw = dict(kw)
    if "eval_models" in kw and kw["eval_models"] is not None:
        em = kw["eval_models"]
        kw["eval_models"] = tuple(em.split(",")) if isinstance(em, str) else tuple(em)
    for k in ("lr_img", "lr_lr", "lr_teacher", "buffer_lr"):
        if isinstance(kw.get(k), int) and not isinstance(kw.get(k), bool):
            kw[k] = float(kw[k])
    return kw


_P = dict  # readability of the table below

# (dataset, ipc) -> values; keys follow DistillConfig.
PRESETS: dict[tuple[str, int], dict] = {
    # CIFAR-10
    ("cifar10", 1): _P(syn_steps=50, expert_epochs=2, max_start_epoch=2, lr_img=100.0,
                       lr_lr=1e-7, lr_teacher=0.01, batch_syn=None, zca=True),
    ("cifar10", 10): _P(syn_steps=30, expert_epochs=2, max_start_epoch=20, lr_img=100.0,
                        lr_lr=1e-5, lr_teacher=0.001, batch_syn=None, zca=True),
    ("cifar10", 50): _P(syn_steps=30, expert_epochs=2, max_start_epoch=40, lr_img=1000.0,
                        lr_lr=1e-5, lr_teacher=0.001, batch_syn=None, zca=False),
    # CIFAR-100
    ("cifar100", 1): _P(syn_steps=20, expert_epochs=3, max_start_epoch=20, lr_img=1000.0,
                        lr_lr=1e-5, lr_teacher=0.01, batch_syn=None, zca=True),
    ("cifar100", 10): _P(syn_steps=20, expert_epochs=2, max_start_epoch=20, lr_img=1000.0,
                         lr_lr=1e-5, lr_teacher=0.01, batch_syn=None, zca=False),
    ("cifar100", 50): _P(syn_steps=80, expert_epochs=2, max_start_epoch=40, lr_img=1000.0,
                         lr_lr=1e-5, lr_teacher=0.01, batch_syn=125, zca=True),
    # Tiny ImageNet (64x64: ConvNetD4)
    ("tinyimagenet", 1): _P(model="ConvNetD4", syn_steps=10, expert_epochs=2,
                            max_start_epoch=10, lr_img=1e4, lr_lr=1e-4, lr_teacher=0.01,
                            batch_syn=None, zca=False),
    ("tinyimagenet", 10): _P(model="ConvNetD4", syn_steps=20, expert_epochs=2,
                             max_start_epoch=40, lr_img=1e4, lr_lr=1e-4, lr_teacher=0.01,
                             batch_syn=200, zca=False),
    ("tinyimagenet", 50): _P(model="ConvNetD4", syn_steps=20, expert_epochs=2,
                             max_start_epoch=40, lr_img=1e4, lr_lr=1e-4, lr_teacher=0.01,
                             batch_syn=300, zca=False),
    # MNIST (ours; not in the paper): a ConvNet of width 32 and few short experts so that a
    # whole run fits a CPU; pass model_kwargs={} (--width 128) for the paper's width.
    ("mnist", 1): _P(syn_steps=20, expert_epochs=2, max_start_epoch=5, lr_img=100.0,
                     lr_lr=1e-6, lr_teacher=0.01, iterations=500, eval_it=100,
                     num_experts=3, buffer_epochs=6, epoch_eval_train=300, num_eval=3,
                     model_kwargs={"width": 32}),
    ("mnist", 10): _P(syn_steps=30, expert_epochs=2, max_start_epoch=5, lr_img=100.0,
                      lr_lr=1e-5, lr_teacher=0.01, iterations=500, eval_it=100,
                      num_experts=3, buffer_epochs=6, epoch_eval_train=300, num_eval=3,
                      model_kwargs={"width": 32}),
    ("mnist", 50): _P(syn_steps=30, expert_epochs=2, max_start_epoch=5, lr_img=1000.0,
                      lr_lr=1e-5, lr_teacher=0.01, iterations=500, eval_it=100,
                      num_experts=3, buffer_epochs=6, epoch_eval_train=300, num_eval=3,
                      model_kwargs={"width": 32}),
    # scikit-learn digits (ours): 8x8 grey, ~1.4k train images. A narrow depth-2 ConvNet:
    # at depth 3 the last instance norm sees 2x2 maps and the matching gradients are
    # erratic (spikes of 1e4x); experts use batch 32 and their own lr 0.02 (set
    # explicitly: ours, not the paper's 0.01) so 10 epochs are enough.
    ("digits", 1): _P(model_kwargs={"width": 32, "depth": 2}, syn_steps=20, expert_epochs=2,
                      max_start_epoch=6, lr_img=100.0, lr_lr=1e-5, lr_teacher=0.02,
                      iterations=300, eval_it=100, num_experts=5, buffer_epochs=10,
                      buffer_batch=32, buffer_lr=0.02, epoch_eval_train=300, num_eval=5),
    ("digits", 10): _P(model_kwargs={"width": 32, "depth": 2}, syn_steps=20, expert_epochs=2,
                       max_start_epoch=6, lr_img=100.0, lr_lr=1e-5, lr_teacher=0.02,
                       iterations=300, eval_it=100, num_experts=5, buffer_epochs=10,
                       buffer_batch=32, buffer_lr=0.02, epoch_eval_train=300, num_eval=5),
}  # fmt: skip

_ALIASES = {
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "tinyimagenet": "tinyimagenet",
    "tiny": "tinyimagenet",
    "mnist": "mnist",
    "digits": "digits",
}
# datasets without rows of their own -> a relative's rows
_BORROW = {"fashionmnist": "mnist", "svhn": "cifar10", "cifar10subset": "cifar10"}


def canonical_dataset(name: str) -> str:
    """``'CIFAR-10'`` / ``'cifar_10'`` -> ``'cifar10'`` (lower case, no ``-`` / ``_``)."""
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    return _ALIASES.get(key, key)


def known_presets() -> list[tuple[str, int]]:
    """The (dataset, ipc) pairs with a row of their own."""
    return sorted(PRESETS)


def preset(dataset: str, ipc: int, **overrides: Any) -> DistillConfig:
    """The run configuration for ``dataset`` at ``ipc`` images per class.

    Args:
        dataset: dataset name (any spelling of ``cifar10``, ``cifar100``,
            ``tinyimagenet``, ``mnist``, ``digits``; other names get a relative's or
            generic values, see the module docstring).
        ipc: images per class (>= 1).
        **overrides: any :class:`DistillConfig` field; ``None`` values are ignored so
            command-line options that were not given can be passed straight through.

    Returns:
        A validated :class:`DistillConfig` (``dataset`` keeps the name given).

    Raises:
        ValueError: an unknown field, or a value :class:`DistillConfig` rejects.
    """
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise ValueError(f"ipc must be an int >= 1, got {ipc!r}")
    names = {f.name for f in fields(DistillConfig)} - {"dataset", "ipc"}
    unknown = sorted(k for k in overrides if k not in names)
    if unknown:
        raise ValueError(f"unknown DistillConfig field(s) {unknown}; known: {sorted(names)}")
    key = canonical_dataset(dataset)
    key = _BORROW.get(key, key)
    rows = {i: v for (d, i), v in PRESETS.items() if d == key}
    base: dict = {}
    if rows:
        nearest = min(rows, key=lambda i: (abs(math.log(i) - math.log(ipc)), i))
        base = dict(rows[nearest])
    base.update({k: v for k, v in overrides.items() if v is not None})
    if "model_kwargs" in base:
        base["model_kwargs"] = dict(base["model_kwargs"])
    return DistillConfig(dataset=dataset, ipc=ipc, **_fix(base))
