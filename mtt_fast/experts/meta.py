"""What a trajectory store holds, typed: :class:`StoreMeta` (the content of ``meta.json``).

Each fact is stored once: the model as its :func:`mtt_fast.models.model_spec` (channels,
classes and image size live there), the parameter layout (the parameter count follows
from it), ZCA under ``preprocessing``, the training settings under ``training``.

``meta.json`` of format version 2::

    {"format": "mtt-fast-trajectories", "format_version": 2, "version": "0.1.0",
     "model": {"name": "ConvNet", "channels": 3, "num_classes": 10, "im_size": [32, 32],
               "width": 128, ...},
     "layout": {"names": [...], "shapes": [...]}, "epochs": 50,
     "dataset": "cifar10", "classes": [...],
     "preprocessing": {"zca": true, "zca_eps": 0.1, "mean": null, "std": null},
     "training": {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 256,
                  "dsa_strategy": "color_crop_cutout_flip_scale_rotate", "lr_decay": false,
                  "seed": 0},
     "imported_from": [], "extra": {}}

Stores of format version 1 (a flat dict that repeated ``zca``, the shapes and the
parameter count) are read as they are: :meth:`StoreMeta.from_dict` converts them in memory
and their files are left untouched.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mtt_fast._version import __version__
from mtt_fast.models.functional import ParamLayout
from mtt_fast.utils import to_jsonable

__all__ = ["FORMAT", "FORMAT_VERSION", "ExpertTraining", "Preprocessing", "StoreMeta"]

FORMAT = "mtt-fast-trajectories"
FORMAT_VERSION = 2
_READABLE = (1, 2)
_SPEC_SHAPE = ("name", "channels", "num_classes", "im_size")


def _bad(what: str, value: Any, want: str) -> ValueError:
    return ValueError(f"store meta: {what} must be {want}, got {value!r}")


def _opt_float(name: str, v: Any, positive: bool = False) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, v, "a finite number or None")
    if v < 0 or (positive and v == 0):
        raise _bad(name, v, "> 0" if positive else ">= 0")
    return float(v)


def _opt_int(name: str, v: Any, low: int | None = None) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, v, "an int or None")
    if low is not None and v < low:
        raise _bad(name, v, f">= {low}")
    return int(v)


def _opt_floats(name: str, v: Any) -> tuple[float, ...] | None:
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise _bad(name, v, "a sequence of numbers or None")
    return tuple(_opt_float(name, x) for x in v)


def _sub(cls, name: str, v: Any):
    if isinstance(v, cls):
        return v
    if v is None:
        return cls()
    if not isinstance(v, Mapping):
        raise _bad(name, v, f"a {cls.__name__} or a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(v) - known)
    if unknown:
        raise ValueError(f"store meta: unknown {name} key(s) {unknown}; known: {sorted(known)}")
    return cls(**v)


@dataclass(frozen=True)
class Preprocessing:
    """How the experts' input images were processed.

    Attributes:
        zca: ZCA-whitened ([0, 1] pixels, no mean/std step), as the original's ``--zca``.
        zca_eps: the ZCA regulariser (0.1 as in the original), ``None`` without ZCA.
        mean, std: the per-channel normalisation constants (mean/std preprocessing only);
            ``None`` when not recorded or with ZCA.
    """

    zca: bool = False
    zca_eps: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.zca, bool):
            raise _bad("preprocessing.zca", self.zca, "a bool")
        object.__setattr__(self, "zca_eps", _opt_float("zca_eps", self.zca_eps, positive=True))
        mean, std = _opt_floats("mean", self.mean), _opt_floats("std", self.std)
        if mean is not None and std is not None and len(mean) != len(std):
            raise ValueError(f"store meta: mean {mean} and std {std} differ in length")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)


@dataclass(frozen=True)
class ExpertTraining:
    """How the experts were trained; ``None`` marks a setting that was not recorded
    (imported buffers record only what the importer is told).

    Attributes:
        lr, momentum, weight_decay: SGD settings.
        batch_size: real mini-batch size.
        dsa_strategy: the DSA groups of every batch; ``"none"``: no augmentation.
        lr_decay: lr x0.1 after epoch ``epochs // 2 + 1``, as the original's ``--decay``.
        seed: base seed (expert ``i`` uses ``seed + i``).
    """

    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    dsa_strategy: str | None = None
    lr_decay: bool | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _opt_float("lr", self.lr, positive=True))
        object.__setattr__(self, "momentum", _opt_float("momentum", self.momentum))
        object.__setattr__(self, "weight_decay", _opt_float("weight_decay", self.weight_decay))
        object.__setattr__(self, "batch_size", _opt_int("batch_size", self.batch_size, 1))
        object.__setattr__(self, "seed", _opt_int("seed", self.seed))
        if self.dsa_strategy is not None and not isinstance(self.dsa_strategy, str):
            raise _bad("dsa_strategy", self.dsa_strategy, "a string or None")
        if self.lr_decay is not None and not isinstance(self.lr_decay, bool):
            raise _bad("lr_decay", self.lr_decay, "a bool or None")


@dataclass(frozen=True)
class StoreMeta:
    """The metadata of a :class:`~mtt_fast.experts.TrajectoryStore`.

    Attributes:
        epochs: epochs per expert (each expert has ``epochs + 1`` snapshots), >= 1.
        layout: the flat parameter layout (``named_parameters()`` order); ``None`` only for
            stores made without one (then ``num_params`` is given).
        num_params: P, the length of one snapshot; derived from ``layout`` when given.
        model: the model spec (:func:`mtt_fast.models.model_spec`; build it with
            :func:`mtt_fast.models.from_spec`), or a mapping with at least ``"name"``
            for models outside the registry, or ``None``. Read-only.
        dataset: dataset name (canonical when :mod:`mtt_fast.data.registry` knows it).
        classes: class names, or ``None``.
        preprocessing: :class:`Preprocessing` (the one place that says ZCA or not).
        training: :class:`ExpertTraining`.
        imported_from: the original ``replay_buffer_N.pt`` files of an imported store.
        version: the mtt-fast version that made the store.
        extra: any other JSON-able facts (read-only).
    """

    epochs: int
    layout: ParamLayout | None = None
    num_params: int | None = None
    model: Mapping[str, Any] | None = None
    dataset: str | None = None
    classes: tuple[str, ...] | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    training: ExpertTraining = field(default_factory=ExpertTraining)
    imported_from: tuple[str, ...] = ()
    version: str = __version__
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"store meta needs 'epochs' >= 1, got {self.epochs!r}")
        lay = self.layout
        if isinstance(lay, Mapping):
            lay = ParamLayout.from_dict(dict(lay))
        if lay is not None and not isinstance(lay, ParamLayout):
            raise _bad("layout", lay, "a ParamLayout, its to_dict() or None")
        set_(self, "layout", lay)
        n = _opt_int("num_params", self.num_params, 1)
        if lay is not None:
            if n is not None and n != lay.num_params:
                raise ValueError(
                    f"store meta: num_params={n} disagrees with its layout "
                    f"({lay.num_params} parameters)"
                )
            n = lay.num_params
        if n is None:
            raise ValueError("store meta needs a parameter 'layout' (or 'num_params')")
        set_(self, "num_params", n)
        if self.model is not None:
            if not isinstance(self.model, Mapping) or not isinstance(self.model.get("name"), str):
                raise _bad("model", self.model, "a model spec with a 'name', or None")
            set_(self, "model", MappingProxyType(to_jsonable(dict(self.model))))
        if self.dataset is not None:
            if not isinstance(self.dataset, str):
                raise _bad("dataset", self.dataset, "a string or None")
            from mtt_fast.data import registry

            try:
                set_(self, "dataset", registry.canonical(self.dataset))
            except ValueError:
                pass  # the user's own data: kept as named
        if self.classes is not None:
            if isinstance(self.classes, (str, bytes)):
                raise _bad("classes", self.classes, "a sequence of names")
            set_(self, "classes", tuple(str(c) for c in self.classes))
            k = self.num_classes
            if k is not None and len(self.classes) != k:
                raise ValueError(
                    f"store meta: {len(self.classes)} class names for a model with {k} classes"
                )
        set_(self, "preprocessing", _sub(Preprocessing, "preprocessing", self.preprocessing))
        set_(self, "training", _sub(ExpertTraining, "training", self.training))
        if isinstance(self.imported_from, (str, bytes)):
            set_(self, "imported_from", (self.imported_from,))
        set_(self, "imported_from", tuple(str(p) for p in self.imported_from))
        set_(self, "version", str(self.version))
        if not isinstance(self.extra, Mapping):
            raise _bad("extra", self.extra, "a mapping")
        set_(self, "extra", MappingProxyType(to_jsonable(dict(self.extra))))

    # ------------------------------------------------------------------ derived facts
    @property
    def model_name(self) -> str | None:
        """The model's registry name, e.g. ``"ConvNet"``."""
        return None if self.model is None else self.model["name"]

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """The spec's constructor options (ConvNet family: width, depth, act, norm, pooling),
        resolved: ``get_model(name, C, K, im_size, **model_kwargs)`` builds the model."""
        return {k: v for k, v in (self.model or {}).items() if k not in _SPEC_SHAPE}

    @property
    def channels(self) -> int | None:
        """Input channels C of the model (from its spec)."""
        return None if self.model is None else self.model.get("channels")

    @property
    def num_classes(self) -> int | None:
        """Classes K of the model (from its spec)."""
        return None if self.model is None else self.model.get("num_classes")

    @property
    def im_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the model's inputs (from its spec)."""
        s = None if self.model is None else self.model.get("im_size")
        return None if s is None else tuple(s)

    @property
    def zca(self) -> bool:
        """Whether the experts saw ZCA-whitened images (``preprocessing.zca``)."""
        return self.preprocessing.zca

    def describe(self) -> str:
        """``"model ConvNet on cifar10 (zca=True)"``."""
        return _describe(self.model_name, self.dataset, self.zca)

    def replace(self, **changes: Any) -> StoreMeta:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON form (format version 2), see the module docstring."""
        d: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "model": None if self.model is None else dict(self.model),
            "layout": None if self.layout is None else self.layout.to_dict(),
            "epochs": self.epochs,
            "dataset": self.dataset,
            "classes": None if self.classes is None else list(self.classes),
            "preprocessing": to_jsonable(self.preprocessing),
            "training": to_jsonable(self.training),
            "imported_from": list(self.imported_from),
            "extra": dict(self.extra),
        }
        if self.layout is None:
            d["num_params"] = self.num_params
        return d

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text (ends with a newline)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StoreMeta:
        """Read the JSON form of format version 2, or the flat dict of version 1.

        A mapping without ``format_version`` is read as version 1 (the dict
        :meth:`TrajectoryStore.create <mtt_fast.experts.TrajectoryStore.create>` took).

        Raises:
            ValueError: another format, a newer format version (says to upgrade
                mtt-fast), a missing or invalid value (names it).
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"store meta must be a JSON object, got {type(d).__name__}")
        fmt = d.get("format", FORMAT)
        if fmt != FORMAT:
            raise ValueError(f"not a {FORMAT} store (format={fmt!r})")
        version = d.get("format_version", 1)
        if version not in _READABLE:
            raise ValueError(
                f"store format_version {version!r} is newer than this mtt-fast "
                f"({__version__}) reads ({', '.join(map(str, _READABLE))}): upgrade mtt-fast"
            )
        if version == 1:
            return _from_v1(d)
        fields = {f.name for f in dataclasses.fields(cls)}
        body = {k: v for k, v in d.items() if k not in ("format", "format_version")}
        unknown = sorted(set(body) - fields)
        if unknown:
            raise ValueError(f"store meta: unknown key(s) {unknown} in format version 2")
        if "epochs" not in body:
            raise ValueError("store meta needs 'epochs' >= 1, got None")
        if body.get("imported_from") is None:
            body.pop("imported_from", None)
        if body.get("extra") is None:
            body.pop("extra", None)
        if body.get("version") is None:
            body["version"] = "unknown"
        return cls(**body)

    @classmethod
    def from_json(cls, text: str) -> StoreMeta:
        """Parse :meth:`to_json` output (or a version 1 ``meta.json``)."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ValueError(f"store meta is not JSON ({e})") from None
        return cls.from_dict(d)

    # ------------------------------------------------------------------ the flat view
    def legacy_view(self) -> dict[str, Any]:
        """The flat dict of format version 1 (``model`` is the name, ``model_spec`` the
        spec, ``zca``, ``lr``, ``dsa``, ... at the top), for code written against it."""
        t, p = self.training, self.preprocessing
        d: dict[str, Any] = dict(self.extra)
        d.update(
            model=self.model_name,
            model_spec=None if self.model is None else dict(self.model),
            dataset=self.dataset,
            zca=p.zca,
            epochs=self.epochs,
            num_params=self.num_params,
            layout=None if self.layout is None else self.layout.to_dict(),
            channels=self.channels,
            num_classes=self.num_classes,
            im_size=None if self.im_size is None else list(self.im_size),
            classes=None if self.classes is None else list(self.classes),
            preprocessing=to_jsonable(p),
            lr=t.lr,
            momentum=t.momentum,
            weight_decay=t.weight_decay,
            batch_size=t.batch_size,
            dsa=None if t.dsa_strategy is None else t.dsa_strategy != "none",
            dsa_strategy=None if t.dsa_strategy in (None, "none") else t.dsa_strategy,
            lr_decay=t.lr_decay,
            seed=t.seed,
            version=self.version,
            format=FORMAT,
        )
        if self.imported_from:
            d["imported_from"] = list(self.imported_from)
        return d

    def get(self, key: str, default: Any = None) -> Any:
        """A value of :meth:`legacy_view` (``meta.get("zca")`` as with the old dict)."""
        v = self.legacy_view().get(key)
        return default if v is None else v

    def __getitem__(self, key: str) -> Any:
        view = self.legacy_view()
        if key not in view or view[key] is None:
            raise KeyError(key)
        return view[key]

    def __contains__(self, key: object) -> bool:
        return self.legacy_view().get(key) is not None

    # ------------------------------------------------------------------ comparison
    def differences(self, asked: StoreMeta) -> list[tuple[str, Any, Any]]:
        """The facts that make two stores' trajectories different, as
        ``(name, this store's value, asked value)``: the model spec (per option), the
        layout, the dataset, ZCA, the epochs and the training settings. Class names,
        normalisation constants, versions and extras are not compared.
        """
        out: list[tuple[str, Any, Any]] = []
        a, b = dict(self.model or {}), dict(asked.model or {})
        if a and b:
            for k in [*a, *(k for k in b if k not in a)]:
                if a.get(k) != b.get(k):
                    out.append((f"model {k}", a.get(k), b.get(k)))
        elif a.get("name") != b.get("name"):
            out.append(("model", a.get("name"), b.get("name")))
        if self.layout is not None and asked.layout is not None:
            if self.layout != asked.layout:
                out.append(("layout", *_first_layout_difference(self.layout, asked.layout)))
        elif self.num_params != asked.num_params:
            out.append(("num_params", self.num_params, asked.num_params))
        for name, x, y in (
            ("dataset", self.dataset, asked.dataset),
            ("zca", self.zca, asked.zca),
            ("epochs", self.epochs, asked.epochs),
        ):
            if x != y:
                out.append((name, x, y))
        if self.zca and asked.zca and self.preprocessing.zca_eps != asked.preprocessing.zca_eps:
            out.append(("zca_eps", self.preprocessing.zca_eps, asked.preprocessing.zca_eps))
        for f in dataclasses.fields(ExpertTraining):
            x, y = getattr(self.training, f.name), getattr(asked.training, f.name)
            if x != y:
                out.append((f.name, x, y))
        return out


def _describe(model: Any, dataset: Any, zca: Any) -> str:
    return f"model {model or '?'} on {dataset or '?'} (zca={zca})"


def _first_layout_difference(a: ParamLayout, b: ParamLayout) -> tuple[Any, Any]:
    for k in range(max(len(a.names), len(b.names))):
        x = (k, a.names[k], list(a.shapes[k])) if k < len(a.names) else None
        y = (k, b.names[k], list(b.shapes[k])) if k < len(b.names) else None
        if x != y:
            return x, y
    return None, None


# v1 keys -> where they went; everything else of a v1 dict lands in ``extra``
_V1_KEYS = {
    "model", "model_spec", "dataset", "zca", "epochs", "lr", "momentum", "weight_decay",
    "batch_size", "dsa", "dsa_strategy", "lr_decay", "seed", "num_params", "layout",
    "channels", "im_size", "num_classes", "classes", "preprocessing", "version", "format",
    "format_version", "imported_from",
}  # fmt: skip


def _from_v1(d: Mapping[str, Any]) -> StoreMeta:
    d = to_jsonable(dict(d))
    spec = d.get("model_spec") or None
    if spec is None and d.get("model") is not None:
        spec = {"name": str(d["model"])}
        spec.update({k: d[k] for k in ("channels", "num_classes", "im_size") if k in d})
    prep = dict(d.get("preprocessing") or {})
    zca = d.get("zca", prep.get("zca"))
    if "dsa" in d:
        dsa = d.get("dsa_strategy") if d["dsa"] else "none"
    else:
        dsa = d.get("dsa_strategy")
    extra = {k: v for k, v in d.items() if k not in _V1_KEYS}
    extra.update({f"preprocessing.{k}": v for k, v in prep.items()
                  if k not in ("zca", "zca_eps", "mean", "std")})  # fmt: skip
    zca = bool(zca) if zca is not None else False
    return StoreMeta(
        epochs=d.get("epochs"),
        layout=d.get("layout"),
        num_params=None if d.get("layout") is not None else d.get("num_params"),
        model=spec,
        dataset=d.get("dataset"),
        classes=d.get("classes"),
        preprocessing=Preprocessing(
            zca=zca,
            zca_eps=prep.get("zca_eps"),
            mean=(prep.get("mean") or None) if not zca else None,
            std=(prep.get("std") or None) if not zca else None,
        ),
        training=ExpertTraining(
            lr=d.get("lr"),
            momentum=d.get("momentum"),
            weight_decay=d.get("weight_decay"),
            batch_size=d.get("batch_size"),
            dsa_strategy=dsa,
            lr_decay=d.get("lr_decay"),
            seed=d.get("seed"),
        ),
        imported_from=d.get("imported_from") or (),
        version=d.get("version") or "unknown",
        extra=extra,
    )
