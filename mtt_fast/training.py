"""Shared training utilities: one epoch of (DSA-augmented) SGD, accuracy, the one epoch
loop (:func:`fit`, with the original's lr decay) and the paper's evaluation protocol.

Both users of the loop run :func:`fit`: expert training (``buffer.py``: ``epochs`` passes,
``lr_schedule = [epochs // 2 + 1]`` when ``--decay``) and :func:`train_and_test`
(``evaluate_synset``: ``epochs + 1`` passes, always decayed after pass ``epochs // 2 + 1``).

Accuracy and loss are accumulated as device tensors inside the batch loop and read on the
host once per epoch, so a GPU run never syncs inside the loop.

Labels may be hard, ``(N,)`` int64 class indices, or soft, ``(N, K)`` float class
probabilities (cross-entropy against the distribution; accuracy against its argmax).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtt_fast import augment as _augment
from mtt_fast.augment import DEFAULT_STRATEGY

__all__ = [
    "EpochStats",
    "check_labels",
    "decay_epoch",
    "evaluate_accuracy",
    "fit",
    "sgd",
    "train_and_test",
    "train_epoch",
]


def check_labels(images: torch.Tensor, labels: torch.Tensor, what: str = "labels") -> None:
    """Raise ``ValueError`` unless ``labels`` is ``(N,)`` integer or ``(N, K)`` float.

    Args:
        images: (N, C, H, W).
        labels: (N,) int64 or (N, K) float.
        what: name used in the message.
    """
    if not torch.is_tensor(images) or images.dim() != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {shape}")
    if not torch.is_tensor(labels):
        raise ValueError(f"{what} must be a tensor, got {type(labels).__name__}")
    n = images.shape[0]
    if labels.dim() == 1:
        if labels.is_floating_point():
            raise ValueError(f"hard {what} must be integer class indices, got {labels.dtype}")
    elif labels.dim() == 2:
        if not labels.is_floating_point():
            raise ValueError(f"soft {what} (N, K) must be float, got {labels.dtype}")
    else:
        raise ValueError(f"{what} must be (N,) or (N, K), got shape {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{what} has {labels.shape[0]} rows but there are {n} images")


def _hard(labels: torch.Tensor) -> torch.Tensor:
    return labels.argmax(1) if labels.dim() == 2 else labels


def train_epoch(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int = 256,
    dsa_strategy: str | None = None,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> tuple[float, float]:
    """One pass of SGD over ``images`` (the original ``epoch('train', ..., aug=True)``).

    Every real mini-batch is augmented with DSA (one group per batch, mode ``'S'``) when
    ``dsa_strategy`` is given; parameters are drawn from ``generator``.

    Args:
        net: model, on the device of ``images``; set to train mode.
        images: (N, C, H, W) float.
        labels: (N,) int64 or (N, K) float probabilities.
        optimizer: over ``net``'s parameters.
        batch_size: mini-batch size (the last batch may be smaller).
        dsa_strategy: e.g. ``"color_crop_cutout_flip_scale_rotate"``; ``None`` / ``"none"``
            trains without augmentation.
        generator: source of the shuffle and the DSA draws (default: torch's global RNG).
        shuffle: visit the images in a random order (else in order).

    Returns:
        ``(mean loss, accuracy)`` over the epoch, read on the host once.
    """
    check_labels(images, labels)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = images.shape[0]
    dev = images.device
    use_dsa = bool(_augment.parse_strategy(dsa_strategy))
    if shuffle:
        gdev = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=gdev).to(dev)
    else:
        order = None
    net.train()
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.int64)
    for s in range(0, n, batch_size):
        if order is not None:
            idx = order[s : s + batch_size]
            x, y = images[idx], labels[idx]
        else:
            x, y = images[s : s + batch_size], labels[s : s + batch_size]
        if use_dsa:
            p = _augment.sample(x.shape[0], dsa_strategy, generator, mode="S", device=dev)
            x = _augment.apply(x, p)
        out = net(x)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss_sum += loss.detach() * x.shape[0]
            correct += (out.argmax(1) == _hard(y)).sum()
    stats = torch.stack([loss_sum, correct.to(loss_sum.dtype)]).tolist()  # one host read
    return stats[0] / n, stats[1] / n


@torch.no_grad()
def evaluate_accuracy(
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024
) -> float:
    """Top-1 accuracy of ``net`` (in eval mode) on ``images``.

    Args:
        net: model on the device of ``images``.
        images: (N, C, H, W) float.
        labels: (N,) int64 or (N, K) float (compared with its argmax).
        batch_size: images per forward pass.

    Returns:
        Accuracy in [0, 1] (one host read at the end); 0.0 for an empty set.
    """
    check_labels(images, labels)
    n = images.shape[0]
    if n == 0:
        return 0.0
    was_training = net.training
    net.eval()
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    hard = _hard(labels)
    for s in range(0, n, batch_size):
        out = net(images[s : s + batch_size])
        correct += (out.argmax(1) == hard[s : s + batch_size]).sum()
    net.train(was_training)
    return int(correct) / n


@dataclass(frozen=True)
class EpochStats:
    """What one pass of :func:`fit` did.

    Attributes:
        epoch: passes done so far (1 after the first pass).
        loss: mean training loss of the pass.
        acc: training accuracy of the pass.
        lr: the learning rate the pass ran at.
    """

    epoch: int
    loss: float
    acc: float
    lr: float


def decay_epoch(epochs: int) -> int:
    """The 0-based pass after which the original code multiplies the lr by 0.1.

    Both ``buffer.py`` and ``evaluate_synset`` use ``lr_schedule = [epochs // 2 + 1]``.
    """
    return int(epochs) // 2 + 1


def sgd(
    net: nn.Module, momentum: float = 0.0, weight_decay: float = 0.0
) -> Callable[[float], torch.optim.Optimizer]:
    """An optimizer factory for :func:`fit`: ``lr -> torch.optim.SGD(net.parameters(), lr, ...)``.

    Args:
        net: the model whose parameters are optimised.
        momentum, weight_decay: SGD settings (defaults 0, 0).
    """

    def make(lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )

    return make


def fit(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    make_optimizer: Callable[[float], torch.optim.Optimizer],
    lr: float,
    passes: int,
    batch_size: int = 256,
    dsa_strategy: str | None = None,
    generator: torch.Generator | None = None,
    decay_after: int | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    start: int = 0,
    optimizer_state: dict | None = None,
    on_state: Callable[[EpochStats, torch.optim.Optimizer], None] | None = None,
) -> EpochStats:
    """The training loop: ``passes`` calls of :func:`train_epoch` with an optional lr decay.

    After the 0-based pass ``decay_after`` (the original's ``lr_schedule``, see
    :func:`decay_epoch`) the lr is multiplied by 0.1 and the optimizer rebuilt with
    ``make_optimizer`` (its state, e.g. momentum, starts afresh, as in the original).

    Args:
        net: model on the device of ``images``.
        images: (N, C, H, W) float.
        labels: (N,) int64 or (N, K) float probabilities.
        make_optimizer: ``lr -> optimizer`` over ``net``'s parameters (e.g. :func:`sgd`).
        lr: the initial learning rate (> 0).
        passes: number of passes over the data (>= 1).
        batch_size: mini-batch size (default 256).
        dsa_strategy: DSA groups for every batch; ``None`` / ``"none"`` trains without.
        generator: source of the shuffles and DSA draws (default: torch's global RNG).
        decay_after: 0-based pass after which the lr decays; ``None``: no decay.
        on_epoch: called after every pass (before the decay) with its :class:`EpochStats`;
            an exception it raises stops the loop.
        start: passes already done (a resumed loop): the loop runs passes ``start ..
            passes - 1`` at the lr those passes have (decayed if ``start > decay_after``).
            ``net``'s parameters and ``generator``'s state must be those after pass
            ``start``; the result is then the uninterrupted loop's, bit for bit.
        optimizer_state: the ``state_dict()`` of the optimizer after pass ``start`` (as
            ``on_state`` gave it), loaded into the rebuilt optimizer.
        on_state: called after every pass, after the decay, with the pass's
            :class:`EpochStats` and the optimizer the next pass uses: what a resume needs.

    Returns:
        The :class:`EpochStats` of the last pass.
    """
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")
    if int(passes) < 1:
        raise ValueError(f"passes must be >= 1, got {passes!r}")
    start = int(start)
    if not 0 <= start <= int(passes):
        raise ValueError(f"start must be in [0, passes={passes}], got {start}")
    if decay_after is not None and start > decay_after:
        lr *= 0.1
    opt = make_optimizer(lr)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    stats = EpochStats(start, 0.0, 0.0, lr)
    for ep in range(start, int(passes)):
        loss, acc = train_epoch(net, images, labels, opt, batch_size, dsa_strategy, generator)
        stats = EpochStats(ep + 1, loss, acc, lr)
        if on_epoch is not None:
            on_epoch(stats)
        if decay_after is not None and ep == decay_after:
            lr *= 0.1
            opt = make_optimizer(lr)
        if on_state is not None:
            on_state(stats, opt)
    return stats


def train_and_test(
    net: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    lr: float | torch.Tensor,
    epochs: int,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    dsa_strategy: str | None = DEFAULT_STRATEGY,
    decay_at_half: bool = True,
    generator: torch.Generator | None = None,
) -> dict:
    """Train ``net`` on a (synthetic or coreset) set and test it: the paper's protocol.

    SGD (momentum 0.9, weight decay 5e-4) with DSA on every batch, exactly as the
    original ``evaluate_synset``: ``epochs + 1`` passes over the set, and after pass
    ``epochs // 2 + 1`` (0-based) the lr is multiplied by 0.1 and the optimizer rebuilt.

    Args:
        net: a freshly initialised model; moved to the device of ``train_images``.
        train_images: (n, C, H, W) float.
        train_labels: (n,) int64 or (n, K) float probabilities.
        test_images: (M, C, H, W) float.
        test_labels: (M,) int64.
        lr: learning rate, a float or a 0-dim tensor (read once with ``float``).
        epochs: the original's ``epoch_eval_train`` (>= 1); ``epochs + 1`` passes run.
        batch_size: mini-batch size (default 256).
        momentum, weight_decay: SGD settings (defaults 0.9, 5e-4).
        dsa_strategy: DSA groups (default all six); ``None`` disables augmentation.
        decay_at_half: multiply the lr by 0.1 after pass ``epochs // 2 + 1``.
        generator: source of shuffles and DSA draws.

    Returns:
        ``{"train_acc", "train_loss", "test_acc", "lr", "epochs"}`` (floats / ints).
    """
    lr = float(lr.detach()) if torch.is_tensor(lr) else float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    check_labels(train_images, train_labels, "train labels")
    check_labels(test_images, test_labels, "test labels")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"train images {tuple(train_images.shape[1:])} and test images "
            f"{tuple(test_images.shape[1:])} differ in (C, H, W)"
        )
    net = net.to(train_images.device)
    epochs = int(epochs)
    last = fit(
        net,
        train_images,
        train_labels,
        sgd(net, momentum, weight_decay),
        lr,
        epochs + 1,  # evaluate_synset: range(Epoch + 1)
        batch_size,
        dsa_strategy,
        generator,
        decay_after=decay_epoch(epochs) if decay_at_half else None,
    )
    test_acc = evaluate_accuracy(net, test_images, test_labels)
    return {
        "train_acc": last.acc,
        "train_loss": last.loss,
        "test_acc": test_acc,
        "lr": lr,
        "epochs": int(epochs),
    }
