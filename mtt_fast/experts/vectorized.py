"""Several experts of one architecture trained at once in one process (``torch.func``).

The experts' parameters are stacked (``torch.func.stack_module_state``) and one step of all
of them is one ``vmap`` of ``grad`` over a single functional model: PyTorch batches the
convolutions of the E experts into one grouped convolution, the norms and the classifier
into batched kernels. Every expert keeps its own generator, so its data order and DSA draws
are exactly those of training it alone (:func:`mtt_fast.training.train_epoch`); its
trajectory equals the one-at-a-time trajectory up to floating-point reassociation (the
plain modules instead of the fused blocks, batched kernels).

Where it pays: on a GPU, where one small ConvNet on a batch of 256 leaves most of the device
idle and E experts fill it for about the cost of one. On a CPU every core is already busy
with one expert; see README "Scaling out" for the measured experts per hour.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mtt_fast import augment as _augment
from mtt_fast import training

__all__ = ["train_together"]


def _flat(params: dict[str, torch.Tensor], names: Sequence[str], e: int) -> torch.Tensor:
    return torch.cat([params[n][e].detach().reshape(-1) for n in names])


def train_together(
    nets: Sequence[torch.nn.Module],
    generators: Sequence[torch.Generator],
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    epochs: int,
    batch_size: int = 256,
    dsa_strategy: str | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    decay_after: int | None = None,
    on_epoch: Callable[[int, list[torch.Tensor], list[training.EpochStats]], None] | None = None,
) -> list[torch.Tensor]:
    """Train ``len(nets)`` networks of one architecture together, as SGD would one by one.

    Args:
        nets: freshly initialised models of the same architecture (their weights are the
            starting points; they are not modified).
        generators: one per model: its shuffles and DSA draws, in the order
            :func:`mtt_fast.training.train_epoch` draws them.
        images, labels: the real training set (on the models' device).
        lr, epochs, batch_size, dsa_strategy, momentum, weight_decay, decay_after: as
            :func:`mtt_fast.training.fit` with :func:`mtt_fast.training.sgd` (the lr x0.1
            after 0-based pass ``decay_after``, the momentum restarting there).
        on_epoch: called after every pass with ``(epoch, flat parameters per model,
            EpochStats per model)``.

    Returns:
        ``(epochs + 1, P)`` flat-parameter snapshots per model (before training and after
        every epoch), in ``named_parameters()`` order.
    """
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    if len(nets) != len(generators) or not nets:
        raise ValueError(f"need one generator per model, got {len(nets)} models, {len(generators)}")
    base = copy.deepcopy(nets[0])
    if hasattr(base, "fused"):
        base.fused = False  # the plain modules: every op has a vmap rule
    params, buffers = stack_module_state(list(nets))
    params = {k: v.detach().clone() for k, v in params.items()}
    names = [n for n, _ in nets[0].named_parameters()]
    num = len(nets)
    dev = images.device
    use_dsa = bool(_augment.parse_strategy(dsa_strategy))
    snaps = [torch.empty(epochs + 1, sum(p[0].numel() for p in params.values()), device=dev)
             for _ in range(num)]  # fmt: skip
    for e in range(num):
        snaps[e][0] = _flat(params, names, e)

    def loss_fn(p, b, x, y):
        out = functional_call(base, (p, b), (x,))
        return F.cross_entropy(out, y), out

    step = vmap(grad_and_value(loss_fn, has_aux=True), randomness="error")
    lr_now = float(lr)
    bufs: dict[str, torch.Tensor] | None = None
    n = images.shape[0]
    for ep in range(int(epochs)):
        orders = [torch.randperm(n, generator=g, device=g.device).to(dev) for g in generators]
        loss_sum = torch.zeros(num, device=dev)
        correct = torch.zeros(num, device=dev)
        for s in range(0, n, batch_size):
            xs, ys = [], []
            for order, g in zip(orders, generators, strict=True):
                idx = order[s : s + batch_size]
                x = images[idx]
                if use_dsa:
                    x = _augment.apply(x, _augment.sample(x.shape[0], dsa_strategy, g, mode="S", device=dev))
                xs.append(x)
                ys.append(labels[idx])
            x, y = torch.stack(xs), torch.stack(ys)
            grads, (loss, out) = step(params, buffers, x, y)
            with torch.no_grad():
                for k, p in params.items():  # torch.optim.SGD's update, all experts at once
                    d = grads[k]
                    if weight_decay:
                        d = d.add(p, alpha=weight_decay)
                    if momentum:
                        if bufs is None or k not in bufs:
                            bufs = bufs or {}
                            bufs[k] = d.clone()
                        else:
                            bufs[k].mul_(momentum).add_(d)
                        d = bufs[k]
                    p.sub_(lr_now * d)
                loss_sum += loss * x.shape[1]
                correct += (out.argmax(-1) == y).sum(1)
        vals = torch.stack([loss_sum / n, correct / n]).tolist()  # one host read per epoch
        stats = [training.EpochStats(ep + 1, vals[0][e], vals[1][e], lr_now) for e in range(num)]
        for e in range(num):
            snaps[e][ep + 1] = _flat(params, names, e)
        if on_epoch is not None:
            on_epoch(ep + 1, [s[ep + 1] for s in snaps], stats)
        if decay_after is not None and ep == decay_after:
            lr_now *= 0.1
            bufs = None  # the original rebuilds the optimizer: momentum starts afresh
    return snaps
