"""Coreset baselines under the evaluation protocol: :func:`coreset` picks real images per
class (random, or herding in a feature space) and :func:`evaluate_baselines` trains on them
at lr 0.01, the DC / MTT protocol."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mtt_fast.augment import DEFAULT_STRATEGY
from mtt_fast.evaluation.protocol import evaluate

__all__ = ["coreset", "evaluate_baselines", "CORESET_KINDS", "BASELINE_LR"]

CORESET_KINDS = ("random", "herding")
BASELINE_LR = 0.01  # real-image coresets are trained at 0.01 (the DC / MTT protocol)


@torch.no_grad()
def _features(x: torch.Tensor, model: torch.nn.Module | None, batch: int = 1024) -> torch.Tensor:
    if model is None:
        return x.flatten(1)
    embed = getattr(model, "embed", None) or model
    was = model.training
    model.eval()
    out = torch.cat([embed(x[s : s + batch]).flatten(1) for s in range(0, x.shape[0], batch)])
    model.train(was)
    return out


def _herding(feat: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy mean matching: indices (n,) whose running mean best tracks ``feat``'s mean.

    Runs on ``feat``'s device without host reads (a mask excludes chosen rows).
    """
    feat = feat.double()  # the greedy choice compares small differences of large sums
    mu = feat.mean(0)
    total = torch.zeros_like(mu)
    taken = torch.zeros(feat.shape[0], dtype=torch.bool, device=feat.device)
    chosen = []
    for k in range(n):
        dist = ((mu - (total + feat) / (k + 1)) ** 2).sum(1)
        dist = dist.masked_fill(taken, math.inf)
        j = dist.argmin()
        chosen.append(j)
        taken[j] = True
        total = total + feat[j]
    return torch.stack(chosen)


def coreset(
    data: Any,
    ipc: int,
    kind: str = "random",
    seed: int = 0,
    model: torch.nn.Module | str | None = None,
    return_indices: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Pick ``ipc`` real training images per class.

    Args:
        data: :class:`mtt_fast.data.Prepared` (train split used).
        ipc: images per class.
        kind: ``"random"`` (a uniform subset of each class) or ``"herding"`` (greedy
            matching of the class mean, Welling 2009, in a feature space).
        seed: seeds the random choice, and the initialisation of ``model`` given by name.
        model: feature space for herding: ``None`` uses raw pixels; a module uses its
            ``embed`` (or its output); a name builds that architecture randomly initialised
            (seeded with ``seed``), as the original's herding baseline uses the embedding
            of a random ConvNet.
        return_indices: also return the chosen rows of ``data.train_images``.

    Returns:
        ``(images (K * ipc, C, H, W), labels (K * ipc,) int64)``, grouped by class, on
        the data's device; with ``return_indices`` a third tensor ``(K * ipc,)`` int64.

    Raises:
        ValueError: unknown ``kind``, ``ipc < 1`` or a class with fewer than ``ipc``
            images.
    """
    if kind not in CORESET_KINDS:
        raise ValueError(f"unknown coreset kind {kind!r}; expected one of {list(CORESET_KINDS)}")
    if int(ipc) < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc!r}")
    ipc = int(ipc)
    x, y = data.train_images, data.train_labels
    k = data.num_classes
    counts = torch.bincount(y, minlength=k).tolist()
    short = [c for c in range(k) if counts[c] < ipc]
    if short:
        raise ValueError(
            f"ipc={ipc} but class(es) {short} have only {[counts[c] for c in short]} images"
        )
    net = None
    if kind == "herding" and model is not None:
        if isinstance(model, str):
            from mtt_fast.models import get_model

            torch.manual_seed(seed)
            net = get_model(model, data.channels, data.num_classes, data.im_size)
        else:
            net = model
        net = net.to(x.device)
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(k):
        idx = torch.nonzero(y == c).flatten()
        if kind == "random":
            sel = idx[torch.randperm(idx.numel(), generator=gen)[:ipc].to(idx.device)]
        else:
            sel = idx[_herding(_features(x[idx], net), ipc)]
        picks.append(sel)
    sel = torch.cat(picks)
    if return_indices:
        return x[sel].clone(), y[sel].clone(), sel
    return x[sel].clone(), y[sel].clone()


def evaluate_baselines(
    data: Any,
    ipc: int,
    lr: float = BASELINE_LR,
    kinds: Sequence[str] = CORESET_KINDS,
    models: Sequence[str] | str = ("ConvNet",),
    num_eval: int = 5,
    epochs: int = 1000,
    batch_size: int = 256,
    dsa_strategy: str | None = DEFAULT_STRATEGY,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    herding_model: torch.nn.Module | str | None = None,
    model_kwargs: Mapping | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Evaluate coreset baselines with the same protocol as :func:`evaluate`.

    Args:
        data: :class:`mtt_fast.data.Prepared`.
        ipc: images per class.
        lr: training lr for the real images (0.01, the DC / MTT protocol; not the
            distillation's ``lr_teacher`` nor a learned lr).
        kinds: coreset kinds (``"random"``, ``"herding"``).
        herding_model: feature space for herding (see :func:`coreset`).
        models, num_eval, epochs, batch_size, dsa_strategy, seed, device, progress,
        model_kwargs: as :func:`evaluate`.

    Returns:
        ``{kind: {model: {"mean", "std", "runs", "train_mean"}}}``, the shape of
        :attr:`EvalReport.results`.
    """
    if isinstance(models, str):
        models = (models,)
    out = {}
    for kind in kinds:
        xs, ys = coreset(data, ipc, kind, seed, herding_model)
        out[kind] = evaluate(
            xs,
            ys,
            lr,
            data,
            models,
            num_eval,
            epochs,
            batch_size,
            dsa_strategy,
            seed,
            device,
            progress,
            model_kwargs,
            source=kind,
        ).results[kind]
    return out
