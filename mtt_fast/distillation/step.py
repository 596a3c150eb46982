"""One distillation iteration (Alg. 1 of the paper): pick an expert and a start epoch,
match the student's trajectory, step the pixels and the lr."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mtt_fast.config import Config
from mtt_fast.distillation.state import DistillState

__all__ = ["Context", "StepOutput", "step"]


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
    expert: int
    start_epoch: int
    schedule: dict | None = None  # how matching laid out its exact gradient (host values)


def next_expert(state: DistillState, num_experts: int) -> int:
    """The next expert of a shuffled order, reshuffled at every pass."""
    if not state.order:
        state.order = torch.randperm(num_experts, generator=state.generators["host"]).tolist()
    return state.order.pop(0)


def step(state: DistillState, ctx: Context) -> StepOutput:
    """Run one iteration in place on ``state`` (no host read of a device value)."""
    from mtt_fast import matching

    cfg = ctx.cfg
    e = next_expert(state, ctx.store.num_experts)
    t = int(torch.randint(cfg.max_start_epoch, (1,), generator=state.generators["host"]))
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
        generator=state.generators["match"],
        mode=cfg.matching,
        segment=cfg.segment,
        store_on=cfg.store_on,
    )
    state.opt_img.zero_grad(set_to_none=True)
    state.opt_lr.zero_grad(set_to_none=True)
    state.images.grad = res.grad_images.to(state.images.dtype)
    state.syn_lr.grad = res.grad_lr.reshape(state.syn_lr.shape).to(state.syn_lr.dtype)
    state.opt_img.step()
    state.opt_lr.step()
    state.iteration += 1
    return StepOutput(res.loss.detach(), e, t, dict(res.schedule) or None)
