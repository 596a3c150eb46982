"""``match`` with the fused ConvNet block equals the plain modules (float64, both modes)."""

from __future__ import annotations

import copy

import pytest
import torch

from mtt_fast import augment as A
from mtt_fast.matching import match, relative_error
from mtt_fast.models import flatten, get_model


@pytest.mark.parametrize(("mode", "segment"), [("unroll", 1), ("checkpoint", 1),
                                               ("checkpoint", 2)])
def test_fused_equals_plain_float64(mode, segment):
    torch.manual_seed(0)
    plain = get_model("ConvNet", 3, 4, (12, 12), width=8, depth=2).double()
    plain.fused = False
    fused = copy.deepcopy(plain)
    fused.fused = True
    start = flatten(plain).double()
    target = start + 0.05 * torch.randn_like(start)
    X = torch.randn(8, 3, 12, 12, dtype=torch.float64)
    y = torch.arange(8) % 4
    lr = torch.tensor(0.05, dtype=torch.float64)
    res = [match(net, start, target, X, y, lr, 5, batch_syn=4, augment=A.DEFAULT_STRATEGY,
                 generator=torch.Generator().manual_seed(3), mode=mode, segment=segment)
           for net in (plain, fused)]
    assert relative_error(res[1].loss, res[0].loss) <= 1e-12
    assert relative_error(res[1].grad_images, res[0].grad_images) <= 1e-10
    assert relative_error(res[1].grad_lr, res[0].grad_lr) <= 1e-10
    assert res[0].grad_images.abs().sum() > 0


def test_segment_layout_recomputes_fewest_steps():
    from mtt_fast.matching import segment_starts

    assert segment_starts(30, 8) == [0, 6, 14, 22]  # last segment full: 22 steps recomputed
    assert segment_starts(5, 2) == [0, 1, 3]
    assert segment_starts(6, 3) == [0, 3]
    assert segment_starts(4, 4) == [0] and segment_starts(3, 10) == [0]
    assert segment_starts(4, 1) == [0, 1, 2, 3]


def test_auto_schedule_is_reported(monkeypatch):
    from mtt_fast import matching

    torch.manual_seed(0)
    net = get_model("ConvNet", 3, 4, (8, 8), width=4, depth=2).double()
    start = flatten(net).double()
    target = start + 0.05 * torch.randn_like(start)
    X = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.arange(6) % 4
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = matching.make_plan(6, 7, None, "flip", torch.Generator().manual_seed(1))
    kw = dict(plan=plan)
    step = matching.step_graph_bytes(net, start, X, y, "hard")
    # a budget for 3 steps' graphs out of 7: segment 3, 4 recomputed steps, exact
    budget = int(3.5 * step)
    r = match(net, start, target, X, y, lr, 7, segment="auto", memory_budget=budget, **kw)
    assert r.segment == 3 and r.recomputed_steps == 4
    assert r.schedule["auto"] and r.schedule["step_graph_bytes"] > 0
    assert r.schedule["budget_bytes"] == budget
    ref = match(net, start, target, X, y, lr, 7, mode="unroll", **kw)
    assert ref.recomputed_steps == 0 and ref.schedule["mode"] == "unroll"
    assert relative_error(r.grad_images, ref.grad_images) <= 1e-10
    big = match(net, start, target, X, y, lr, 7, segment="auto", memory_budget=1 << 40, **kw)
    assert big.segment == 7 and big.recomputed_steps == 0
