"""The one typed configuration of a run: shared settings plus three sections.

``Config`` holds what every stage shares (dataset, IPC, architecture, preprocessing, DSA,
seed) and three frozen sections:

* ``experts`` (:class:`ExpertSettings`): how experts are trained (the original buffer.py);
* ``distill`` (:class:`DistillSettings`): the distillation loop (distill.py);
* ``eval`` (:class:`EvalSettings`): the evaluation protocol (evaluate_synset).

Every field name is unique across the sections, so a flat name (``syn_steps``,
``num_experts``, ``epoch_eval_train``) addresses exactly one field: ``cfg.syn_steps`` reads
it, ``cfg.replace(syn_steps=30)`` changes it, and ``to_dict`` / ``from_dict`` use the flat
form (the form checkpoints and reports store). Each field carries its command-line flag and
help text, so each subcommand shows and takes only its own sections' settings.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from mtt_fast.augment import DEFAULT_STRATEGY, parse_strategy

__all__ = [
    "Config",
    "ExpertSettings",
    "DistillSettings",
    "EvalSettings",
    "SECTIONS",
    "EXPERT_LR",
    "MATCHING_MODES",
    "INITS",
    "field_specs",
]

MATCHING_MODES = ("unroll", "checkpoint")
INITS = ("real", "noise")
EXPERT_LR = 0.01  # buffer.py's --lr_teacher default: every expert, every dataset


def _f(default: Any, help: str, flag: str | None = None, kind: Any = None, **kw: Any):
    """A dataclass field with its CLI flag, help text and argparse type in metadata."""
    meta = {"help": help, "flag": flag, "kind": kind}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# ------------------------------------------------------------------ validation


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bad(obj: Any, name: str, want: str) -> ValueError:
    return ValueError(f"{name} must be {want}, got {getattr(obj, name)!r}")


def _ints(obj: Any, low: int, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if not _is_int(v) or v < low:
            raise _bad(obj, n, f"an int >= {low}")


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if not _is_num(v) or v <= 0:
            raise _bad(obj, n, "a positive finite number")


def _floats(kw: dict, *names: str) -> None:
    for n in names:
        if _is_int(kw.get(n)):
            kw[n] = float(kw[n])


# ------------------------------------------------------------------ sections


@dataclass(frozen=True)
class ExpertSettings:
    """Expert training (the original buffer.py). A store does not depend on the IPC it
    serves nor on the distillation's ``lr_teacher``.

    Attributes:
        num_experts: experts in the store.
        buffer_epochs: epochs per expert (``epochs + 1`` snapshots).
        buffer_batch: real mini-batch (256).
        buffer_lr: SGD lr of the experts (buffer.py's ``--lr_teacher``: 0.01).
        buffer_momentum: SGD momentum (buffer.py: 0).
        buffer_weight_decay: SGD weight decay (buffer.py: 0).
        buffer_lr_decay: lr x0.1 after epoch ``buffer_epochs // 2 + 1`` (buffer.py ``--decay``).
        experts_at_once: experts one process trains together, vectorised with ``torch.func``
            (each the same expert up to floating-point reassociation). Meant for a GPU: on a CPU
            core it is slower than one at a time (0.28-0.45x measured; use processes there).
    """

    num_experts: int = _f(100, "experts in the store")
    buffer_epochs: int = _f(50, "epochs per expert", flag="--expert-epochs-train")
    buffer_batch: int = _f(256, "experts' real mini-batch", flag="--expert-batch")
    buffer_lr: float = _f(EXPERT_LR, "experts' SGD lr (default 0.01, as buffer.py)", flag="--expert-lr")
    buffer_momentum: float = _f(0.0, "experts' SGD momentum", flag="--expert-momentum")
    buffer_weight_decay: float = _f(0.0, "experts' SGD weight decay", flag="--expert-weight-decay")
    buffer_lr_decay: bool = _f(False, "experts' lr x0.1 after epoch epochs//2+1", flag="--expert-lr-decay")
    experts_at_once: int = _f(1, "experts trained together in one process (vectorised; for a GPU: slower on a CPU)")

    def __post_init__(self) -> None:
        _ints(self, 1, "num_experts", "buffer_epochs", "buffer_batch", "experts_at_once")
        _positive(self, "buffer_lr")
        for n in ("buffer_momentum", "buffer_weight_decay"):
            if not _is_num(getattr(self, n)) or getattr(self, n) < 0:
                raise _bad(self, n, "a finite number >= 0")
        if not isinstance(self.buffer_lr_decay, bool):
            raise _bad(self, "buffer_lr_decay", "a bool")


@dataclass(frozen=True)
class DistillSettings:
    """The distillation loop (the original distill.py).

    Attributes:
        iterations: distillation iterations (the paper: 5000).
        syn_steps: student SGD steps per iteration (N).
        expert_epochs: expert epochs the student must match (M).
        max_start_epoch: start epochs are drawn from ``[0, max_start_epoch)``.
        lr_img: SGD (momentum 0.5) lr of the pixels.
        lr_lr: SGD (momentum 0.5) lr of the learnable student lr.
        lr_teacher: initial value of the learnable student lr (not the experts' lr).
        batch_syn: synthetic mini-batch per student step; ``None`` = the whole set.
        init: ``"real"`` images of each class or ``"noise"``.
        matching: ``"checkpoint"`` (memory-efficient exact gradient) or ``"unroll"``.
        segment: steps recomputed together in checkpoint mode (int or ``"auto"``).
        store_on: where checkpoint mode keeps per-step vectors (``"device"`` | ``"host"``).
        eval_it: evaluate every ``eval_it`` iterations (0: only at the end).
        checkpoint_it: checkpoint interval (``None``: ``eval_it``).
        log_every: iterations between host reads of the loss.
        trajectories: (expert, start epoch) pairs matched per iteration, their exact
            gradients averaged (1 = the paper). Under torchrun they are spread over the
            processes; the set does not depend on the number of processes.
    """

    iterations: int = _f(5000, "distillation iterations")
    syn_steps: int = _f(20, "student steps per iteration (N)")
    expert_epochs: int = _f(2, "expert epochs matched per iteration (M)")
    max_start_epoch: int = _f(20, "start epochs are drawn from [0, max_start_epoch)")
    lr_img: float = _f(1000.0, "lr of the pixels (SGD momentum 0.5)")
    lr_lr: float = _f(1e-5, "lr of the learnable student lr (SGD momentum 0.5)")
    lr_teacher: float = _f(0.01, "initial learnable student lr (not the experts')")
    batch_syn: int | None = _f(None, "synthetic mini-batch per student step: int or 'all'", kind="int_or_all")
    init: str = _f("real", "initial images: real | noise", kind=INITS)
    matching: str = _f("checkpoint", "exact gradient: checkpoint | unroll", kind=MATCHING_MODES)
    segment: int | str = _f(1, "checkpoint segment: N or 'auto'", kind="int_or_auto")
    store_on: str = _f("device", "where checkpoint mode keeps per-step vectors", kind=("device", "host"))
    eval_it: int = _f(500, "evaluate every N iterations (0: only at the end)")
    checkpoint_it: int | None = _f(None, "checkpoint every N iterations (default: eval-it)")
    log_every: int = _f(10, "iterations between loss reads")
    trajectories: int = _f(1, "trajectories matched per iteration, gradients averaged (1: the paper)")

    def __post_init__(self) -> None:
        _ints(self, 1, "syn_steps", "expert_epochs", "max_start_epoch", "log_every", "trajectories")
        _ints(self, 0, "iterations", "eval_it")
        _positive(self, "lr_img", "lr_lr", "lr_teacher")
        if self.batch_syn is not None and (not _is_int(self.batch_syn) or self.batch_syn < 1):
            raise _bad(self, "batch_syn", "None (the whole set) or an int >= 1")
        if self.checkpoint_it is not None and (not _is_int(self.checkpoint_it) or self.checkpoint_it < 1):
            raise _bad(self, "checkpoint_it", "None or an int >= 1")
        for name, choices in (("init", INITS), ("matching", MATCHING_MODES), ("store_on", ("device", "host"))):
            if getattr(self, name) not in choices:
                raise _bad(self, name, f"one of {choices}")
        if not (self.segment == "auto" or (_is_int(self.segment) and self.segment >= 1)):
            raise _bad(self, "segment", "an int >= 1 or 'auto'")


@dataclass(frozen=True)
class EvalSettings:
    """The evaluation protocol (the original evaluate_synset).

    Attributes:
        num_eval: fresh models per evaluation (0 disables the periodic evaluation).
        epoch_eval_train: the protocol's epochs (``epochs + 1`` passes run, as the original).
        eval_models: architectures evaluated (default: the distilled model only).
    """

    num_eval: int = _f(5, "models per evaluation")
    epoch_eval_train: int = _f(1000, "training epochs per evaluation model", flag="--eval-epochs")
    eval_models: tuple[str, ...] = _f((), "architectures evaluated, comma-separated", flag="--models", kind="csv")

    def __post_init__(self) -> None:
        _ints(self, 0, "num_eval")
        _ints(self, 1, "epoch_eval_train")
        if isinstance(self.eval_models, str) or not all(
            isinstance(m, str) and m for m in self.eval_models
        ):
            raise _bad(self, "eval_models", "a tuple of model names")
        from mtt_fast.models import MODEL_NAMES

        bad = [m for m in self.eval_models if m not in MODEL_NAMES]
        if bad:
            raise ValueError(f"unknown model(s) {bad} in eval_models; known: {', '.join(MODEL_NAMES)}")


SECTIONS: dict[str, type] = {
    "experts": ExpertSettings,
    "distill": DistillSettings,
    "eval": EvalSettings,
}
_SECTION_OF = {f.name: s for s, cls in SECTIONS.items() for f in fields(cls)}


@dataclass(frozen=True)
class Config:
    """The whole configuration of a run (see the module docstring).

    Attributes:
        dataset: dataset name (:mod:`mtt_fast.data`).
        ipc: synthetic images per class.
        model: architecture (:func:`mtt_fast.models.get_model`); the experts' too.
        model_kwargs: ConvNet-family options (e.g. ``{"width": 32}``).
        zca: ZCA-whiten the data (kornia ``eps=0.1``) instead of mean/std normalisation.
        dsa_strategy: DSA groups joined by ``_``; ``"none"`` disables augmentation.
        seed: seed of every generator.
        experts, distill, eval: the sections.
    """

    dataset: str = _f("digits", "dataset name")
    ipc: int = _f(1, "images per class")
    model: str = _f("ConvNet", "architecture")
    model_kwargs: dict = _f({}, "ConvNet options (--width, --depth)", kind="model_kwargs")
    zca: bool = _f(False, "ZCA-whiten the data", kind=bool)
    dsa_strategy: str = _f(DEFAULT_STRATEGY, "DSA groups joined by _ ('none' disables)")
    seed: int = _f(0, "seed of every generator")
    experts: ExpertSettings = field(default_factory=ExpertSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        for n in ("dataset", "model"):
            if not isinstance(getattr(self, n), str) or not getattr(self, n):
                raise _bad(self, n, "a non-empty string")
        if not isinstance(self.model_kwargs, dict):
            raise _bad(self, "model_kwargs", "a dict")
        _ints(self, 1, "ipc")
        _ints(self, 0, "seed")
        if not isinstance(self.zca, bool):
            raise _bad(self, "zca", "a bool")
        if not isinstance(self.dsa_strategy, str):
            raise _bad(self, "dsa_strategy", "a string")
        try:
            parse_strategy(self.dsa_strategy)
        except ValueError as e:
            raise ValueError(f"dsa_strategy: {e}") from None

    # flat access: cfg.syn_steps is cfg.distill.syn_steps
    def __getattr__(self, name: str) -> Any:
        sec = _SECTION_OF.get(name)
        if sec is None:
            raise AttributeError(f"Config has no setting {name!r}")
        return getattr(object.__getattribute__(self, sec), name)

    # ---------------------------------------------------------- derived values
    @property
    def dsa(self) -> str | None:
        """The DSA strategy for matching / training (``None`` when disabled)."""
        return self.dsa_strategy if parse_strategy(self.dsa_strategy) else None

    @property
    def expert_lr(self) -> float:
        """The experts' SGD lr (``buffer_lr``; independent of ``lr_teacher``)."""
        return self.experts.buffer_lr

    @property
    def checkpoint_every(self) -> int:
        """Iterations between checkpoints (0 = only at the end)."""
        c = self.distill
        return c.checkpoint_it if c.checkpoint_it is not None else c.eval_it

    @property
    def models_to_eval(self) -> tuple[str, ...]:
        return self.eval.eval_models or (self.model,)

    @property
    def min_epochs(self) -> int:
        """Epochs an expert trajectory needs: the last start epoch plus ``expert_epochs``."""
        return self.distill.max_start_epoch - 1 + self.distill.expert_epochs

    # ---------------------------------------------------------- flat form
    def to_dict(self) -> dict:
        """Flat plain-JSON form (tuples become lists), the form checkpoints store."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in SECTIONS}
        d["model_kwargs"] = dict(self.model_kwargs)
        for s in SECTIONS:
            d.update(asdict(getattr(self, s)))
        d["eval_models"] = list(self.eval.eval_models)
        return d

    def sections(self) -> dict[str, dict]:
        """``{"run": shared settings, "experts": ..., "distill": ..., "eval": ...}``."""
        flat = self.to_dict()
        out = {"run": {f.name: flat[f.name] for f in fields(self) if f.name not in SECTIONS}}
        for s, cls in SECTIONS.items():
            out[s] = {f.name: flat[f.name] for f in fields(cls)}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (older files may carry
        settings that no longer exist), missing ones take their defaults."""
        return cls().replace(**{k: v for k, v in d.items() if k in field_names()})

    def replace(self, **changes: Any) -> Config:
        """A validated copy with ``changes`` (flat names).

        Raises:
            ValueError: an unknown name (the known ones are listed) or a bad value.
        """
        unknown = sorted(k for k in changes if k not in field_names())
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(field_names())}")
        kw = _normalise(changes)
        top = {k: v for k, v in kw.items() if k not in _SECTION_OF}
        for s in SECTIONS:
            sub = {k: v for k, v in kw.items() if _SECTION_OF.get(k) == s}
            if sub:
                top[s] = replace(getattr(self, s), **sub)
        return replace(self, **top)


def field_names() -> set[str]:
    """Every flat setting name."""
    return {f.name for f in fields(Config) if f.name not in SECTIONS} | set(_SECTION_OF)


def field_specs(section: str) -> list[tuple[str, Any, dict]]:
    """``(name, default, metadata)`` of a section's fields (``"run"`` for the shared ones),
    in declaration order, for building command-line options."""
    cls = Config if section == "run" else SECTIONS[section]
    out = []
    for f in fields(cls):
        if f.name in SECTIONS:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, default, dict(f.metadata)))
    return out


def _normalise(kw: dict) -> dict:
    kw = dict(kw)
    em = kw.get("eval_models")
    if em is not None:
        kw["eval_models"] = tuple(m.strip() for m in em.split(",") if m.strip()) if isinstance(em, str) else tuple(em)
    if "model_kwargs" in kw and kw["model_kwargs"] is not None:
        kw["model_kwargs"] = dict(kw["model_kwargs"])
    _floats(kw, "lr_img", "lr_lr", "lr_teacher", "buffer_lr", "buffer_momentum", "buffer_weight_decay")
    return kw
