"""The paper's evaluation protocol: :func:`evaluate` trains ``num_eval`` fresh models per
architecture on a synthetic set only (SGD momentum 0.9, weight decay 5e-4, the learned lr,
``epochs + 1`` passes with x0.1 after pass ``epochs // 2 + 1``, DSA, batch 256, as the
original ``evaluate_synset``) and reports test accuracy mean +- std."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mtt_fast.augment import DEFAULT_STRATEGY
from mtt_fast.synthetic import SyntheticSet
from mtt_fast.training import check_labels, train_and_test

__all__ = ["EvalReport", "evaluate"]


@dataclass
class EvalReport:
    """Test accuracies of models trained on one or more image sets.

    Attributes:
        results: ``{source: {model: {"mean", "std", "runs", "train_mean"}}}``; accuracies
            in [0, 1], ``runs`` the per-model test accuracies, ``std`` the population std
            (``np.std``, as the original).
        config: how the runs were made (dataset, ipc, epochs, num_eval, ...).
    """

    results: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return json.loads(json.dumps({"results": self.results, "config": self.config}))

    def merge(self, other: EvalReport) -> EvalReport:
        """Add ``other``'s sources (in place); returns self."""
        for src, per_model in other.results.items():
            self.results.setdefault(src, {}).update(per_model)
        return self

    def summary(self) -> str:
        """One line per (source, model): ``source model: mean +- std % (n runs)``."""
        lines = []
        for src, per_model in self.results.items():
            for m, r in per_model.items():
                lines.append(
                    f"{src:>8s} {m:<12s} {100 * r['mean']:6.2f} +- {100 * r['std']:5.2f} % "
                    f"({len(r['runs'])} runs)"
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _stats(test: list[float], train: list[float]) -> dict[str, Any]:
    return {
        "mean": float(np.mean(test)),
        "std": float(np.std(test)),
        "runs": [float(a) for a in test],
        "train_mean": float(np.mean(train)),
    }


def _check_set(images: torch.Tensor, labels: torch.Tensor, data: Any) -> None:
    if not torch.is_tensor(images) or images.dim() != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a (n, C, H, W) tensor, got {shape}")
    want = (data.channels, *data.im_size)
    if tuple(images.shape[1:]) != want:
        raise ValueError(
            f"images are {tuple(images.shape[1:])} (C, H, W) but the dataset "
            f"{getattr(data, 'name', '')} has {want}"
        )
    check_labels(images, labels)
    k = data.num_classes
    if labels.dim() == 2 and labels.shape[1] != k:
        raise ValueError(f"soft labels have {labels.shape[1]} classes, the dataset has {k}")
    if labels.dim() == 1 and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(
            f"labels must be in [0, {k}), got range [{int(labels.min())}, {int(labels.max())}]"
        )


def _kwargs_for(model_kwargs: Mapping | None, name: str, names: Sequence[str]) -> dict:
    if not model_kwargs:
        return {}
    if any(k in names for k in model_kwargs):  # per-model mapping
        return dict(model_kwargs.get(name) or {})
    return dict(model_kwargs)


def _run_models(
    source: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    data: Any,
    models: Sequence[str],
    num_eval: int,
    epochs: int,
    batch_size: int,
    dsa_strategy: str | None,
    seed: int,
    device: torch.device,
    progress: bool,
    model_kwargs: Mapping | None,
) -> dict[str, dict[str, Any]]:
    from mtt_fast.models import get_model

    x, y = images.detach().to(device), labels.detach().to(device)
    tx, ty = data.test_images.to(device), data.test_labels.to(device)
    out: dict[str, dict[str, Any]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(models) * num_eval, desc=f"eval {source}", unit="model")
    try:
        for name in models:
            kw = _kwargs_for(model_kwargs, name, models)
            test, train = [], []
            for r in range(num_eval):
                torch.manual_seed(seed + r)
                net = get_model(name, data.channels, data.num_classes, data.im_size, **kw)
                gen = torch.Generator(device=device).manual_seed(seed + r)
                res = train_and_test(
                    net,
                    x,
                    y,
                    tx,
                    ty,
                    lr,
                    epochs,
                    batch_size,
                    dsa_strategy=dsa_strategy,
                    generator=gen,
                )
                test.append(res["test_acc"])
                train.append(res["train_acc"])
                if bar is not None:
                    bar.set_postfix(model=name, acc=f"{res['test_acc']:.3f}", refresh=False)
                    bar.update(1)
            out[name] = _stats(test, train)
    finally:
        if bar is not None:
            bar.close()
    return out


_FROM_SET = "from-set"  # default of evaluate's dsa_strategy: the set's own, else all groups


def evaluate(
    images: torch.Tensor | str | os.PathLike,
    labels: torch.Tensor | None = None,
    lr: float | torch.Tensor | None = None,
    data: Any = None,
    models: Sequence[str] | str | None = None,
    num_eval: int = 5,
    epochs: int = 1000,
    batch_size: int = 256,
    dsa_strategy: str | None = _FROM_SET,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    model_kwargs: Mapping | None = None,
    source: str = "mtt",
    root: str | os.PathLike | None = None,
) -> EvalReport:
    """Evaluate a synthetic set: train fresh models on it only, test on the real test set.

    Args:
        images: (n, C, H, W) synthetic images in the data's processed space, or a
            :class:`~mtt_fast.synthetic.SyntheticSet` or the path of one (its labels, lr,
            architecture, DSA setting and dataset are used where not given).
        labels: (n,) int64 or (n, K) float soft labels.
        lr: training lr (the learned one), float or 0-dim tensor.
        data: :class:`mtt_fast.data.Prepared` whose test split is used. With a file that
            records ``dataset`` (and ``zca``), ``None`` prepares it from ``root``.
        models: architecture names (``mtt_fast.models.MODEL_NAMES``). Default: the
            architecture stored with the set (its name and ``model_kwargs``, e.g. the
            width-32 ConvNet a set was distilled with) when ``images`` is a file, else
            ``("ConvNet",)``.
        num_eval: fresh models per architecture (model ``r`` seeded with ``seed + r``).
        epochs: training epochs per model (1000 in the paper; 300 for the original's
            periodic evaluation).
        batch_size: mini-batch size (256).
        dsa_strategy: DSA groups; ``None`` trains without augmentation. Default: the
            set's own setting when ``images`` is a file that records one, else all six
            groups (the paper).
        seed: base seed.
        device: where the models train.
        progress: show a tqdm bar.
        model_kwargs: ``get_model`` overrides, for all models (``{"width": 64}``) or per
            model (``{"ConvNet": {"width": 64}}``). Default with a file: the stored
            ``model_kwargs`` for the stored architecture.
        source: the name of this set in the report (default ``"mtt"``).
        root: data folder used when ``data`` must be prepared from the file's ``dataset``.

    Returns:
        :class:`EvalReport` with ``results[source][model] = {"mean", "std", "runs", ...}``.

    Raises:
        ValueError: images not matching the data's (C, H, W), labels of the wrong length /
            classes, a missing lr or data.
    """
    syn: SyntheticSet | None = None
    if isinstance(images, (str, os.PathLike, SyntheticSet)):
        syn = images if isinstance(images, SyntheticSet) else SyntheticSet.load(images)
        images = syn.images
        labels = syn.labels if labels is None else labels
        lr = syn.lr if lr is None else lr
        if data is None and syn.dataset:
            from mtt_fast.data import prepare

            data = prepare(syn.dataset, root=root, zca=syn.zca, device=device)
    if models is None:
        models = (syn.model if syn is not None else "ConvNet",)
        if model_kwargs is None and syn is not None and syn.model_kwargs:
            model_kwargs = {models[0]: dict(syn.model_kwargs)}
    if dsa_strategy == _FROM_SET:
        dsa_strategy = syn.dsa_strategy if syn is not None else DEFAULT_STRATEGY
    if data is None:
        raise ValueError("evaluate needs data= (a mtt_fast.data.Prepared) for its test split")
    if labels is None:
        raise ValueError("evaluate needs labels for the synthetic images")
    if lr is None:
        raise ValueError("evaluate needs lr (the learned learning rate)")
    lr_f = float(lr.detach()) if torch.is_tensor(lr) else float(lr)
    if not math.isfinite(lr_f) or lr_f <= 0:
        raise ValueError(f"lr must be a finite positive number, got {lr_f!r}")
    if isinstance(models, str):
        models = (models,)
    _check_set(images, labels, data)
    device = torch.device(device)
    results = _run_models(
        source,
        images,
        labels,
        lr_f,
        data,
        tuple(models),
        int(num_eval),
        int(epochs),
        batch_size,
        dsa_strategy,
        seed,
        device,
        progress,
        model_kwargs,
    )
    n, k = images.shape[0], data.num_classes
    config = {
        "dataset": getattr(data, "name", None),
        "zca": bool(getattr(data, "zca_flag", False)),
        "num_images": int(n),
        "ipc": n // k if n % k == 0 else n / k,
        "lr": lr_f,
        "epochs": int(epochs),
        "num_eval": int(num_eval),
        "batch_size": int(batch_size),
        "dsa_strategy": dsa_strategy,
        "seed": int(seed),
        "models": list(models),
    }
    return EvalReport({source: results}, config)


