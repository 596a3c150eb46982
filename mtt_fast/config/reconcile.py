"""The one place where a configuration meets what is already on disk.

A store fixes the architecture, the dataset and the preprocessing its experts saw; a
distillation checkpoint fixes everything that shapes its synthetic set. For each such fact:
a setting the user gave explicitly must agree (else the run stops with one line naming
both values); a setting that came from a preset or a default quietly takes the value on
disk.

Optimisation settings of a resumed distillation (``lr_img``, ``lr_lr``) may be changed
explicitly (e.g. after a divergence); the change is reported so the loop can record it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mtt_fast.config.schema import Config

__all__ = ["reconcile_store", "reconcile_checkpoint", "store_model_kwargs", "RESUME_KEYS", "CHANGEABLE_ON_RESUME"]

# settings a resumed distillation shares with its checkpoint (they shape the result)
RESUME_KEYS = (
    "dataset",
    "ipc",
    "model",
    "model_kwargs",
    "syn_steps",
    "expert_epochs",
    "max_start_epoch",
    "lr_teacher",
    "batch_syn",
    "zca",
    "dsa_strategy",
    "init",
    "seed",
    "trajectories",
)
# optimisation settings that an explicit request may change on resume
CHANGEABLE_ON_RESUME = ("lr_img", "lr_lr")

_FLAGS = {
    "model_kwargs": "--width/--depth",
    "zca": "--zca/--no-zca",
    "buffer_epochs": "--expert-epochs-train",
}


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _norm_dataset(name: Any) -> str:
    from mtt_fast.config.presets import canonical_dataset

    return canonical_dataset(str(name)) if name else ""


def store_model_kwargs(meta: Any) -> dict:
    """The options of a store's architecture that differ from its name's defaults
    (``{"width": 16}`` for a width-16 ``ConvNet``), from the stored model spec
    (:class:`~mtt_fast.experts.meta.StoreMeta`)."""
    if meta.model_name is None:
        return {}
    return _normal_kwargs(meta.model_name, meta.model_kwargs)


def _normal_kwargs(model: str, kwargs: Mapping) -> dict:
    """Options minus those equal to the architecture's defaults."""
    from mtt_fast.models import model_spec

    try:
        base = model_spec(model, 1, 2, (32, 32))
    except ValueError:
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if base.get(k, object()) != v}


def reconcile_store(cfg: Config, meta: Any, explicit: Iterable[str], where: str) -> Config:
    """Align ``cfg`` with a trajectory store's metadata.

    Args:
        cfg: the configuration built from presets, defaults and the user's settings.
        meta: the store's :class:`~mtt_fast.experts.meta.StoreMeta`.
        explicit: names of the settings the user gave explicitly.
        where: the store's folder, for messages.

    Returns:
        ``cfg`` with the store's model, ConvNet options and preprocessing.

    Raises:
        ValueError: an explicit setting contradicts the store (names both values), or the
            store was trained on another dataset.
    """
    explicit = set(explicit)
    changes: dict[str, Any] = {}
    s_model = meta.model_name
    if s_model and s_model != cfg.model:
        if "model" in explicit:
            raise ValueError(
                f"--model {cfg.model} was asked, but the experts in {where} are {s_model}; "
                "distill with the experts' architecture"
            )
        changes["model"] = s_model
    model = changes.get("model", cfg.model)
    s_kw = store_model_kwargs(meta)
    want = _normal_kwargs(model, cfg.model_kwargs)
    if s_kw != want:
        if "model_kwargs" in explicit and (model == cfg.model):
            mine = {k: v for k, v in want.items() if s_kw.get(k) != v} or want
            theirs = {k: meta.model_kwargs.get(k) for k in (mine or s_kw)}
            raise ValueError(
                f"model options {mine} were asked, but the experts in {where} have {theirs}; "
                "distill with the experts' architecture (or train experts for it)"
            )
        changes["model_kwargs"] = s_kw
    s_zca = meta.zca
    if s_zca is not None and bool(s_zca) != cfg.zca:
        if "zca" in explicit:
            raise ValueError(
                f"zca={cfg.zca} was asked, but the experts in {where} were trained with "
                f"zca={bool(s_zca)}; distill with the experts' preprocessing"
            )
        changes["zca"] = bool(s_zca)
    s_ds = meta.dataset
    if s_ds and _norm_dataset(s_ds) != _norm_dataset(cfg.dataset):
        raise ValueError(
            f"the experts in {where} were trained on {s_ds!r}, the run asks for {cfg.dataset!r}"
        )
    return cfg.replace(**changes) if changes else cfg


def reconcile_checkpoint(
    cfg: Config, saved: Mapping, explicit: Iterable[str], where: str
) -> tuple[Config, dict[str, tuple[Any, Any]]]:
    """Align ``cfg`` with the configuration a distillation checkpoint was made with.

    Args:
        cfg: the run's configuration.
        saved: the checkpoint's flat configuration (``Config.to_dict()``).
        explicit: names of the settings the user gave explicitly.
        where: the checkpoint file, for messages.

    Returns:
        ``(cfg, changed)``: ``cfg`` with the checkpoint's result-shaping settings, and the
        optimisation settings changed on purpose (``{name: (old, new)}``).

    Raises:
        ValueError: an explicit setting contradicts the checkpoint (names both values).
    """
    explicit = set(explicit)
    old = Config.from_dict(dict(saved))
    adopt: dict[str, Any] = {}
    clashes = []
    for k in RESUME_KEYS:
        a, b = getattr(old, k), getattr(cfg, k)
        if k == "dataset":
            a, b = _norm_dataset(a), _norm_dataset(b)
        if a == b:
            continue
        if k in explicit:
            clashes.append(f"{_flag(k)}: checkpoint {getattr(old, k)!r}, asked {getattr(cfg, k)!r}")
        elif k != "dataset":
            adopt[k] = getattr(old, k)
    if clashes:
        raise ValueError(
            f"cannot resume from {where}: it was made with other settings ({'; '.join(clashes)}); "
            "drop those options or use a fresh output folder"
        )
    changed = {}
    for k in CHANGEABLE_ON_RESUME:
        a, b = getattr(old, k), getattr(cfg, k)
        if a != b:
            if k in explicit:
                changed[k] = (a, b)
            else:
                adopt[k] = a
    return (cfg.replace(**adopt) if adopt else cfg), changed
