"""The ConvNet family with the fused norm block: same parameters, layout and results as
the plain modules (forward, gradients, double backward), switchable per model or
module-wide; other variants keep the plain modules."""

from __future__ import annotations

import copy

import pytest
import torch

from mtt_fast import backends
from mtt_fast.models import flatten, functional_forward, get_model, layout, networks


def _pair(name="ConvNet", C=3, S=(12, 10), **kw):
    torch.manual_seed(0)
    plain = get_model(name, C, 5, S, width=6, **kw).double()
    plain.fused = False
    fused = copy.deepcopy(plain)
    fused.fused = True
    return plain, fused


def test_layout_and_state_dict_unchanged():
    plain, fused = _pair()
    assert fused.uses_fused_blocks() and not plain.uses_fused_blocks()
    assert layout(plain) == layout(fused)
    assert list(plain.state_dict()) == list(fused.state_dict())
    assert [n for n, _ in fused.named_parameters()][:2] == ["features.0.weight", "features.0.bias"]
    assert "features.1.weight" in dict(fused.named_parameters())
    torch.testing.assert_close(flatten(plain), flatten(fused))
    # a state dict from one loads into the other
    fresh = get_model("ConvNet", 3, 5, (12, 10), width=6).double()
    fresh.load_state_dict(plain.state_dict())
    assert fresh.uses_fused_blocks()


@pytest.mark.parametrize(("name", "C", "S", "kw"), [
    ("ConvNet", 3, (12, 10), {"depth": 2}),
    ("ConvNet", 1, (28, 28), {"depth": 3}),    # padded first conv, 32 -> 16 -> 8 -> 4
    ("ConvNet", 3, (13, 11), {"depth": 2}),    # odd maps: pooling drops a row / column
])
def test_same_results_to_second_order(name, C, S, kw):
    plain, fused = _pair(name, C, S, **kw)
    flat = (flatten(plain).double() + 0.01 * torch.randn(sum(p.numel() for p in plain.parameters()),
                                                          dtype=torch.float64))
    x = torch.randn(4, C, *S, dtype=torch.float64)
    outs = []
    for net in (plain, fused):
        th = flat.clone().requires_grad_(True)
        xx = x.clone().requires_grad_(True)
        backends.last_used.pop("norm_block", None)
        out = functional_forward(net, th, xx)
        used = backends.last_used.get("norm_block")
        assert (used is not None) == net.uses_fused_blocks()
        loss = torch.nn.functional.cross_entropy(out, torch.arange(4) % 5)
        (g,) = torch.autograd.grad(loss, th, create_graph=True)
        v = torch.randn_like(g, generator=torch.Generator().manual_seed(1))
        gth, gx = torch.autograd.grad((g * v).sum(), (th, xx))
        outs.append((out.detach(), g.detach(), gth, gx))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the plain module call agrees with the functional view too
    torch.testing.assert_close(plain(x), fused(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["ConvNetBN", "ConvNetMP", "ConvNetAS", "ConvNetNP", "ConvNetGN",
                                  "ConvNetLN", "ConvNetNN"])
def test_other_variants_keep_plain_modules(name):
    net = get_model(name, 3, 4, (16, 16), width=4)
    assert not net.uses_fused_blocks()
    backends.last_used.pop("norm_block", None)
    net(torch.randn(2, 3, 16, 16))
    assert "norm_block" not in backends.last_used


def test_module_level_switch(monkeypatch):
    net = get_model("ConvNet", 3, 4, (16, 16), width=4)
    assert net.uses_fused_blocks()
    monkeypatch.setattr(networks, "FUSED_NORM_BLOCK", False)
    assert not net.uses_fused_blocks()
    net.fused = True  # the model's own setting wins
    assert net.uses_fused_blocks()
