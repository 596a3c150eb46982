from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mtt_fast.models import (
    ParamLayout,
    flatten,
    functional_forward,
    get_model,
    layout,
    load_flat,
    unflatten,
)


def tiny(depth=1, norm="instancenorm", dtype=torch.float64, c=2, s=8, k=3):
    torch.manual_seed(0)
    return get_model("ConvNet", c, k, (s, s), width=4, depth=depth, norm=norm).to(dtype)


def test_layout_order_and_roundtrip():
    m = get_model("ConvNet", 3, 10)
    lay = layout(m)
    assert lay.names == tuple(n for n, _ in m.named_parameters())
    assert lay.shapes == tuple(tuple(p.shape) for p in m.parameters())
    assert lay.num_params == 320_010 == sum(lay.numels)
    d = json.loads(json.dumps(lay.to_dict()))
    assert ParamLayout.from_dict(d) == lay
    assert hash(ParamLayout.from_dict(d)) == hash(lay)
    assert layout(get_model("ConvNet", 3, 100)) != lay


def test_param_layout_validation():
    with pytest.raises(ValueError, match="names"):
        ParamLayout(("a", "b"), ((1,),))
    with pytest.raises(ValueError, match="duplicate"):
        ParamLayout(("a", "a"), ((1,), (2,)))
    with pytest.raises(ValueError, match="missing key"):
        ParamLayout.from_dict({"names": []})
    lay = ParamLayout(["w", "b"], [[2, 3], [3]])  # lists are normalised to tuples
    assert lay.shapes == ((2, 3), (3,)) and lay.num_params == 9


def test_flatten_unflatten_load():
    m = tiny(dtype=torch.float32)
    flat = flatten(m)
    assert flat.dtype == torch.float32 and flat.shape == (layout(m).num_params,)
    assert not flat.requires_grad
    expected = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    assert torch.equal(flat, expected)
    parts = unflatten(flat, layout(m))
    for (n, p), (n2, v) in zip(m.named_parameters(), parts.items()):
        assert n == n2 and v.shape == p.shape and v.data_ptr() >= flat.data_ptr()
        assert torch.equal(v, p.detach())
    # views: writing through flat shows up in the pieces
    flat[0] = 123.0
    assert next(iter(parts.values())).reshape(-1)[0] == 123.0
    # load_flat copies into the model
    new = torch.randn_like(flat)
    load_flat(m, new)
    assert torch.equal(flatten(m), new)
    # flatten is a copy
    new.zero_()
    assert flatten(m).abs().sum() > 0


def test_flatten_casts_to_float32():
    m = tiny(dtype=torch.float64)
    assert flatten(m).dtype == torch.float32


def test_wrong_length_errors():
    m = tiny(dtype=torch.float32)
    p = layout(m).num_params
    bad = torch.zeros(p + 1)
    for call in (
        lambda: unflatten(bad, layout(m)),
        lambda: load_flat(m, bad),
        lambda: functional_forward(m, bad, torch.zeros(1, 2, 8, 8)),
    ):
        with pytest.raises(ValueError, match=f"expected {p}.*got {p + 1}"):
            call()
    with pytest.raises(ValueError, match="1-D"):
        unflatten(torch.zeros(1, p), layout(m))


@pytest.mark.parametrize("name", ["ConvNet", "ConvNetBN", "ResNet18BN_AP", "MLP"])
def test_functional_forward_matches_module(name):
    m = get_model(name, 3, 4, (16, 16) if name != "MLP" else (8, 8))
    s = 16 if name != "MLP" else 8
    m.eval()  # BatchNorm: use running stats so both calls see the same buffers
    x = torch.randn(2, 3, s, s)
    flat = flatten(m)
    torch.testing.assert_close(functional_forward(m, flat, x), m(x))
    # the model's own weights are ignored
    other = torch.randn_like(flat) * 0.1
    y = functional_forward(m, other, x, layout=layout(m))
    load_flat(m, other)
    torch.testing.assert_close(y, m(x))


def test_functional_forward_grads_match_module_grads():
    m = tiny(depth=2, dtype=torch.float32)
    x = torch.randn(3, 2, 8, 8)
    y = torch.tensor([0, 1, 2])
    flat = flatten(m).requires_grad_(True)
    F.cross_entropy(functional_forward(m, flat, x), y).backward()
    F.cross_entropy(m(x), y).backward()
    ref = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    torch.testing.assert_close(flat.grad, ref)


@pytest.mark.parametrize("depth", [1, 2])
def test_gradcheck_flat_and_x(depth):
    m = tiny(depth=depth)
    flat = flatten(m).double().requires_grad_(True)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64, requires_grad=True)

    def f(flat, x):
        return functional_forward(m, flat, x)

    assert torch.autograd.gradcheck(f, (flat, x))
    assert torch.autograd.gradgradcheck(f, (flat, x))


def test_double_backward_through_inner_step():
    # The MTT pattern: grad wrt params with create_graph, then differentiate a function
    # of that grad (one SGD step) with respect to the inputs.
    m = tiny(depth=2)
    flat = flatten(m).double().requires_grad_(True)
    y = torch.tensor([0, 2])

    def outer(x):
        loss = F.cross_entropy(functional_forward(m, flat, x), y)
        (g,) = torch.autograd.grad(loss, flat, create_graph=True)
        new = flat - 0.1 * g
        return (new**2).sum()

    x = torch.randn(2, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(outer(x), x)
    assert gx.shape == x.shape and gx.abs().sum() > 0
    assert torch.autograd.gradcheck(outer, (x,))
