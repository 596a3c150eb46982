"""One distillation iteration (Alg. 1 of the paper): pick K (expert, start epoch) pairs,
match the student's trajectory from each, average their exact gradients, step the pixels
and the lr. K = ``cfg.trajectories`` (1 = the paper).

What trajectory ``j`` of iteration ``t`` does depends only on the seed, ``t`` and ``j``:
every process draws the same K pairs from the ``host`` generator (expert order, start
epochs), and trajectory ``j``'s replayed plan (mini-batches, DSA draws) comes from a
generator seeded with :func:`plan_seed` ``(seed, t, j)``. Under torchrun process ``r`` of
``W`` matches trajectories ``r, r + W, ...`` and one ``all_reduce`` sums the gradients, so
1 and W processes make the same synthetic set up to the order of the sums.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from mtt_fast import distributed
from mtt_fast.config import Config
from mtt_fast.distillation.state import DistillState

__all__ = ["Context", "StepOutput", "step", "plan_seed"]


@dataclass
class Context:
    """What an iteration reads but never changes: the configuration, the experts, the
    student architecture (its weights are never used) and the device."""

    cfg: Config
    store: Any
    net: torch.nn.Module
    device: torch.device


@dataclass
class StepOutput:
    loss: torch.Tensor  # 0-dim, on the device (read on the host only at log points)
    expert: int  # the first trajectory's expert and start epoch
    start_epoch: int
    schedule: dict | None = None  # how matching laid out its exact gradient (host values)
    pairs: tuple[tuple[int, int], ...] = ()  # (expert, start epoch) of every trajectory


def plan_seed(seed: int, iteration: int, j: int) -> int:
    """The seed of trajectory ``j``'s plan at ``iteration`` (0-based): a hash, so no two
    (iteration, j) share a stream whatever K is."""
    h = hashlib.blake2b(f"mtt-fast/{seed}/{iteration}/{j}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def next_expert(state: DistillState, num_experts: int) -> int:
    """The next expert of a shuffled order, reshuffled at every pass."""
    if not state.order:
        state.order = torch.randperm(num_experts, generator=state.generators["host"]).tolist()
    return state.order.pop(0)


def step(state: DistillState, ctx: Context) -> StepOutput:
    """Run one iteration in place on ``state`` (no host read of a device value)."""
    from mtt_fast import matching

    cfg = ctx.cfg
    rank, size = distributed.world()
    host = state.generators["host"]
    pairs = []
    for _ in range(cfg.trajectories):  # every process draws every pair, in the same order
        e = next_expert(state, ctx.store.num_experts)
        pairs.append((e, int(torch.randint(cfg.max_start_epoch, (1,), generator=host))))
    grad_img = torch.zeros_like(state.images)
    acc = torch.zeros(2, device=state.images.device)  # lr gradient, loss
    schedule = None
    for j in range(rank, cfg.trajectories, size):
        e, t = pairs[j]
        start, target = ctx.store.pair(e, t, t + cfg.expert_epochs, device=ctx.device)
        res = matching.match(
            ctx.net,
            start,
            target,
            state.images,
            state.labels,
            state.syn_lr,
            cfg.syn_steps,
            batch_syn=cfg.batch_syn,
            augment=cfg.dsa,
            generator=torch.Generator().manual_seed(plan_seed(cfg.seed, state.iteration, j)),
            mode=cfg.matching,
            segment=cfg.segment,
            store_on=cfg.store_on,
        )
        grad_img += res.grad_images.to(grad_img.dtype)
        acc += torch.stack([res.grad_lr.reshape(()), res.loss.detach().reshape(())]).to(acc.dtype)
        schedule = schedule or (dict(res.schedule) or None)
    if size > 1:  # one collective per iteration: pixels, lr gradient and loss together
        flat = torch.cat([grad_img.reshape(-1), acc])
        distributed.all_reduce_sum(flat)
        grad_img, acc = flat[: grad_img.numel()].view_as(grad_img), flat[grad_img.numel() :]
    k = float(cfg.trajectories)
    state.opt_img.zero_grad(set_to_none=True)
    state.opt_lr.zero_grad(set_to_none=True)
    state.images.grad = (grad_img / k).to(state.images.dtype)
    state.syn_lr.grad = (acc[0] / k).reshape(state.syn_lr.shape).to(state.syn_lr.dtype)
    state.opt_img.step()
    state.opt_lr.step()
    state.iteration += 1
    return StepOutput(acc[1] / k, pairs[0][0], pairs[0][1], schedule, tuple(pairs))
