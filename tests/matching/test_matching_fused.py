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
