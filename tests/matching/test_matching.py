"""Checkpointed vs unrolled trajectory-matching gradients (exactness and replay)."""

from __future__ import annotations

import pytest
import torch

from mtt_fast import augment as A
from mtt_fast import matching
from mtt_fast.matching import make_plan, match, relative_error
from mtt_fast.models import flatten, get_model


def _problem(dtype=torch.float64, name="ConvNet", n=8, K=4, C=3, S=8, seed=0, soft=None):
    torch.manual_seed(seed)
    net = get_model(name, channels=C, num_classes=K, im_size=(S, S), width=8, depth=2)
    net = net.to(dtype)
    start = flatten(net).to(dtype)
    target = start + 0.05 * torch.randn_like(start)
    images = torch.randn(n, C, S, S, dtype=dtype, requires_grad=True)
    if soft is None:
        labels = torch.arange(n) % K
    else:
        labels = torch.randn(n, K, dtype=dtype)
        if soft == "prob":
            labels = labels.softmax(1)
        labels.requires_grad_(True)
    lr = torch.tensor(0.05, dtype=dtype, requires_grad=True)
    return net, start, target, images, labels, lr


def _both(prob, seed=1, **kw):
    net, start, target, images, labels, lr = prob
    out = {}
    for mode in ("unroll", "checkpoint"):
        g = torch.Generator().manual_seed(seed)
        out[mode] = match(net, start, target, images, labels, lr, mode=mode, generator=g, **kw)
    return out["unroll"], out["checkpoint"]


@pytest.mark.parametrize("syn_steps,segment", [(1, 1), (3, 1), (5, 1), (5, 2), (6, 3), (4, 4)])
def test_checkpoint_equals_unroll_float64(syn_steps, segment):
    prob = _problem()
    u, c = _both(prob, syn_steps=syn_steps, batch_syn=3, augment=A.DEFAULT_STRATEGY,
                 segment=segment, dsa_mode="M")
    assert relative_error(c.loss, u.loss) <= 1e-12
    assert relative_error(c.grad_images, u.grad_images) <= 1e-10
    assert relative_error(c.grad_lr, u.grad_lr) <= 1e-10
    assert c.segment == min(segment, syn_steps)
    assert c.grad_images.abs().sum() > 0


def test_checkpoint_equals_unroll_float32_mode_S():
    prob = _problem(dtype=torch.float32, n=10)
    u, c = _both(prob, syn_steps=6, batch_syn=4, augment=A.DEFAULT_STRATEGY, segment=1)
    assert relative_error(c.grad_images, u.grad_images) <= 1e-4
    assert relative_error(c.grad_lr, u.grad_lr) <= 1e-4


@pytest.mark.parametrize("soft", ["prob", "logits"])
def test_soft_label_gradients_match(soft):
    prob = _problem(soft=soft)
    u, c = _both(prob, syn_steps=4, batch_syn=5, augment="flip_crop", segment=1,
                 label_kind=soft)
    assert u.grad_labels is not None and c.grad_labels is not None
    assert relative_error(c.grad_labels, u.grad_labels) <= 1e-10
    assert relative_error(c.grad_images, u.grad_images) <= 1e-10


def test_batchnorm_model_and_host_storage():
    prob = _problem(name="ConvNetBN")
    u, c = _both(prob, syn_steps=4, batch_syn=4, augment="scale_rotate", segment=1,
                 store_on="host")
    assert relative_error(c.grad_images, u.grad_images) <= 1e-10
    assert relative_error(c.grad_lr, u.grad_lr) <= 1e-10
    assert c.stored_bytes == 4 * prob[1].numel() * 8


def test_lr_gradient_matches_finite_differences():
    net, start, target, images, labels, lr = _problem()
    plan = make_plan(8, 3, 4, "color_crop", torch.Generator().manual_seed(3), dsa_mode="M")
    res = match(net, start, target, images, labels, lr, 3, plan=plan)
    h = 1e-6

    def L(v):
        return match(net, start, target, images, labels, torch.tensor(v, dtype=torch.float64),
                     3, plan=plan).loss

    fd = (L(0.05 + h) - L(0.05 - h)) / (2 * h)
    assert abs(float(fd) - float(res.grad_lr)) <= 1e-6 * max(1.0, abs(float(fd)))
    # and one pixel of the image gradient
    e = torch.zeros_like(images)
    e[2, 1, 3, 4] = 1.0

    def Li(t):
        return match(net, start, target, images.detach() + t * e, labels, lr, 3,
                     plan=plan).loss

    fdi = (Li(h) - Li(-h)) / (2 * h)
    assert abs(float(fdi) - float(res.grad_images[2, 1, 3, 4])) <= 1e-6


def test_replay_draws_once_per_step(monkeypatch):
    calls = []
    real = A.sample

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(matching._aug, "sample", counting)
    prob = _problem()
    net, start, target, images, labels, lr = prob
    match(net, start, target, images, labels, lr, 5, batch_syn=3, augment=A.DEFAULT_STRATEGY,
          generator=torch.Generator().manual_seed(0), mode="checkpoint", segment=1)
    assert len(calls) == 5  # drawn once, before the forward sweep; replayed backward


def test_parity_is_sensitive_to_replay():
    # Negative control: had the backward sweep resampled the augmentation or the batches,
    # its gradient would be that of another plan, which is far from the replayed one.
    net, start, target, images, labels, lr = _problem()
    p1 = make_plan(8, 4, 3, A.DEFAULT_STRATEGY, torch.Generator().manual_seed(1), dsa_mode="M")
    p2 = make_plan(8, 4, 3, A.DEFAULT_STRATEGY, torch.Generator().manual_seed(2), dsa_mode="M")
    a = match(net, start, target, images, labels, lr, 4, plan=p1, mode="unroll")
    b = match(net, start, target, images, labels, lr, 4, plan=p2, mode="checkpoint")
    c = match(net, start, target, images, labels, lr, 4, plan=p1, mode="checkpoint")
    assert relative_error(b.grad_images, a.grad_images) > 1e-2
    assert relative_error(c.grad_images, a.grad_images) <= 1e-10


def test_plan_batches_cover_the_set_like_the_original():
    plan = make_plan(10, 4, 4, None, torch.Generator().manual_seed(0))
    sizes = [len(i) for i in plan.indices]
    # permutation split into [4, 4, 2], popped from the end, then a fresh permutation
    assert sizes == [2, 4, 4, 2]
    assert sorted(torch.cat(plan.indices[:3]).tolist()) == list(range(10))


def test_segment_auto_uses_budget():
    prob = _problem()
    net, start, target, images, labels, lr = prob
    plan = make_plan(8, 6, 4, "flip", torch.Generator().manual_seed(0))
    small = match(net, start, target, images, labels, lr, 6, segment="auto", memory_budget=1,
                  plan=plan)
    assert small.segment == 1
    big = match(net, start, target, images, labels, lr, 6, segment="auto",
                memory_budget=1 << 40, plan=plan)
    assert big.segment == 6
    assert relative_error(small.grad_images, big.grad_images) <= 1e-10


def test_user_tensors_untouched_and_loss_is_tensor():
    net, start, target, images, labels, lr = _problem()
    res = match(net, start, target, images, labels, lr, 2)
    assert images.grad is None and lr.grad is None
    assert torch.is_tensor(res.loss) and res.loss.dim() == 0
    assert res.grad_images.shape == images.shape and res.grad_lr.shape == lr.shape
    assert res.grad_labels is None


def test_bad_inputs():
    net, start, target, images, labels, lr = _problem()
    with pytest.raises(ValueError, match="start must be a flat parameter vector"):
        match(net, start[:-1], target, images, labels, lr, 2)
    with pytest.raises(ValueError, match="labels must be"):
        match(net, start, target, images, labels[:-1], lr, 2)
    with pytest.raises(ValueError, match="mode"):
        match(net, start, target, images, labels, lr, 2, mode="tesla")
    with pytest.raises(ValueError, match="batch_syn"):
        match(net, start, target, images, labels, lr, 2, batch_syn=100)
    with pytest.raises(ValueError, match="segment"):
        match(net, start, target, images, labels, lr, 3, segment=0)
