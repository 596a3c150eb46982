"""The registered ops under ``torch.compile(fullgraph=True)`` on CPU: DSA (every group,
through the compiled ops and the autograd formulas registered for them) followed by a ConvNet forward and a
first-order backward. Fake kernels let dynamo trace them without graph breaks; the graphs
AOTAutograd makes hold the ``mtt_fast`` ops themselves (forward and backward), and the
compiled result equals the eager reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import mtt_fast
from mtt_fast import _ext
from mtt_fast.augment import resolve
from mtt_fast.matching import relative_error
from mtt_fast.models import flatten, get_model
from mtt_fast.models.functional import layout, unflatten
from mtt_fast.ops.dsa import native

pytestmark = pytest.mark.skipif(
    not _ext.has_kernel("dsa_affine", "cpu"),
    reason=f"the compiled CPU ops are not available: {_ext.load_error()}",
)


@pytest.fixture(autouse=True)
def _no_stale_autograd_cache():
    """AOTAutograd's on-disk cache keys a graph by its ops, not by the autograd formulas
    registered for them: an entry written while ``mtt_fast::dsa_*`` had none would replay
    a graph that gives ``x`` no gradient. Off here (inductor's own cache stays on)."""
    with torch._functorch.config.patch(enable_autograd_cache=False):
        yield


def _problem():
    torch.manual_seed(0)
    net = get_model("ConvNet", 3, 10, (16, 16), width=16, depth=2)
    lay = layout(net)
    w = flatten(net).detach().requires_grad_(True)
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    y = torch.arange(8) % 10
    params = mtt_fast.augment.sample(8, strategy="color_crop_cutout_flip_scale_rotate",
                                     generator=torch.Generator().manual_seed(0), mode="M")
    ops = resolve(params, 16, 16)
    assert {n for n, _ in ops} == {"color", "crop", "cutout", "flip", "affine"}

    def step(x, w):
        for name, a in ops:
            x = getattr(native, name)(x, **a)
        return F.cross_entropy(functional_call(net, unflatten(w, lay), (x,)), y)

    def reference(x, w):
        a = mtt_fast.augment.apply(x, params, backend="torch")
        return F.cross_entropy(functional_call(net, unflatten(w, lay), (a,)), y)

    return step, reference, x, w


def test_fullgraph_compile_matches_eager_reference():
    step, reference, x, w = _problem()
    torch._dynamo.reset()
    loss = torch.compile(step, fullgraph=True)(x, w)  # inductor; raises on a graph break
    gx, gw = torch.autograd.grad(loss, (x, w))
    ref = reference(x, w)
    rx, rw = torch.autograd.grad(ref, (x, w))
    assert relative_error(loss.detach(), ref.detach()) <= 1e-5
    assert relative_error(gx, rx) <= 1e-5 and relative_error(gw, rw) <= 1e-5


def test_compiled_graphs_hold_the_registered_ops():
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs: dict[str, str] = {}

    def keep(kind):
        def compiler(gm, example_inputs):
            graphs[kind] = gm.code
            return make_boxed_func(gm.forward)

        return compiler

    step, _, x, w = _problem()
    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward"))
    loss = torch.compile(step, fullgraph=True, backend=backend)(x, w)
    torch.autograd.grad(loss, (x, w))
    for op in ("dsa_affine", "dsa_flip", "dsa_crop", "dsa_cutout", "dsa_color"):
        assert f"mtt_fast.{op}" in graphs["forward"], op
    for op in ("dsa_affine_backward", "dsa_color_backward", "dsa_flip", "dsa_crop"):
        assert f"mtt_fast.{op}" in graphs["backward"], op


def test_fullgraph_compile_through_augment_apply():
    """The public entry point (validation, dispatch, the autograd Function) traces without a
    graph break, and its compiled forward and backward equal eager's."""
    _, _, x, _ = _problem()
    params = mtt_fast.augment.sample(8, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    y = torch.compile(lambda t: mtt_fast.augment.apply(t, params, backend="native"),
                      fullgraph=True, backend="aot_eager")(x)
    (g,) = torch.autograd.grad((y**2).sum(), x)
    ye = mtt_fast.augment.apply(x, params, backend="native")
    (ge,) = torch.autograd.grad((ye**2).sum(), x)
    assert torch.equal(y, ye) and torch.equal(g, ge)
