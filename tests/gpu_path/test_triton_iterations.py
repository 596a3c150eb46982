"""The GPU path, end to end, against the reference: a whole matching iteration (checkpoint
and unroll), a whole distillation iteration (matching + the SGD-momentum updates of pixels
and lr, over two iterations, from real experts) and the real distillation loop, with the
Triton DSA kernels; and the ZCA whitening of the data pipeline with the Triton kernel.

Without a GPU the kernels run on CPU tensors under ``TRITON_INTERPRET=1`` (set by
``tests/conftest.py``); with one, the same tests run the compiled kernels on CUDA tensors.

Criteria. float64: 1e-10 relative (with a negative control: a 1e-8 relative change of the
input moves the reference by more than that). float32: no further from the float64
result than the reference's own float32 run is, where "the reference's own float32 error"
is the largest over runs at inputs perturbed by 1e-7 relative (float32 round-off of the
input), and at least 4 float32 ulps (``ULPS``, for scalars such as grad_lr): on a small instance-normed ConvNet such a perturbation alone moves a float32
gradient by orders of magnitude more than any one kernel's rounding, so a single float32
comparison is not a fair test.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mtt_fast
from mtt_fast import backends
from mtt_fast.matching import match, relative_error
from mtt_fast.models import flatten, get_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STRATEGY = "color_crop_cutout_flip_scale_rotate"
_WHY = None
if not backends.triton_importable():
    _WHY = "triton is not importable"
elif DEVICE == "cpu" and not backends.triton_interpret():
    _WHY = "no GPU and TRITON_INTERPRET is not 1: Triton cannot run on CPU tensors"
pytestmark = pytest.mark.skipif(_WHY is not None, reason=str(_WHY))

QUANTITIES = ("loss", "grad_images", "grad_lr")
PERTURBATIONS = 4  # float32 reference runs at perturbed inputs, for its error envelope
# Below a few units of float32 round-off errors cannot be ordered: a scalar (the loss,
# grad_lr) lands within 1-2 ulps in any float32 evaluation order. Measured here (10
# perturbed inputs, checkpoint): reference grad_lr 1e-9..4.9e-8, Triton 1e-9..1.3e-7.
ULPS = 4 * 2.0**-24


def _perturbed(x: torch.Tensor, seed: int, eps: float) -> torch.Tensor:
    if seed == 0:
        return x
    g = torch.Generator().manual_seed(1000 + seed)
    return x * (1 + eps * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x))


# ------------------------------------------------------------------ matching iteration


def _matching_problem(n=20, K=10, hw=16):
    """float64 master copies: ConvNet (instance norm) width 16 depth 2 on 3x16x16, IPC 2."""
    torch.manual_seed(0)
    net = get_model("ConvNet", 3, K, (hw, hw), width=16, depth=2).double()
    start = flatten(net).detach()
    g = torch.Generator().manual_seed(1)
    target = start + 0.01 * torch.randn(start.shape, generator=g, dtype=torch.float64)
    X = torch.randn(n, 3, hw, hw, generator=g, dtype=torch.float64)
    y = torch.arange(n) % K
    return net, start, target, X, y


def _match(dtype, backend, mode, x_seed=0, eps=1e-7):
    net, start, target, X, y = _matching_problem()
    X = _perturbed(X, x_seed, eps)
    dev = torch.device(DEVICE)
    lr = torch.tensor(0.01, dtype=dtype, device=dev)
    res = match(net.to(dev, dtype), start.to(dev, dtype), target.to(dev, dtype),
                X.to(dev, dtype), y.to(dev), lr, syn_steps=4, batch_syn=10, augment=STRATEGY,
                generator=torch.Generator().manual_seed(3), mode=mode, backend=backend)
    if backend is not None:
        assert backends.last_used["dsa"] == backend  # the backend asked for is what ran
    return {q: getattr(res, q).detach().double().cpu() for q in QUANTITIES}


@pytest.mark.parametrize("mode", ["checkpoint", "unroll"])
def test_matching_iteration_float64(mode):
    ref = _match(torch.float64, "torch", mode)
    tri = _match(torch.float64, "triton", mode)
    for q in QUANTITIES:
        assert relative_error(tri[q], ref[q]) <= 1e-10, (q, relative_error(tri[q], ref[q]))
    # negative control: the criterion sees a 1e-8 relative change of the input
    moved = _match(torch.float64, "torch", mode, x_seed=1, eps=1e-8)
    assert relative_error(moved["grad_images"], ref["grad_images"]) > 1e-10


def _envelope(run64, run32) -> dict[str, float]:
    """Largest float32 error of the reference over inputs perturbed by 1e-7."""
    env = dict.fromkeys(QUANTITIES, ULPS)
    for s in range(PERTURBATIONS):
        a, b = run32(s), run64(s)
        for q in QUANTITIES:
            env[q] = max(env[q], relative_error(a[q], b[q]))
    return env


@pytest.mark.parametrize("mode", ["checkpoint", "unroll"])
def test_matching_iteration_float32(mode):
    exact = _match(torch.float64, "torch", mode)
    tri = _match(torch.float32, "triton", mode)
    env = _envelope(lambda s: _match(torch.float64, "torch", mode, x_seed=s),
                    lambda s: _match(torch.float32, "torch", mode, x_seed=s))
    for q in QUANTITIES:
        err = relative_error(tri[q], exact[q])
        assert err <= env[q], (q, err, env)


# ------------------------------------------------------------------ distillation iteration

MK = {"width": 16, "depth": 2}


@pytest.fixture(scope="module")
def digits():
    return mtt_fast.data.prepare("digits")


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits):
    return mtt_fast.train_experts(
        "digits", model_kwargs=MK, num_experts=2, epochs=3, lr=0.02, batch_size=64,
        out=tmp_path_factory.mktemp("experts"), progress=False, data=digits, seed=0)


def _distill_iterations(store, digits, dtype, backend, x_seed=0, iterations=2):
    """What one distillation iteration does (DESIGN: pick an expert and a start epoch,
    match, one SGD step with momentum 0.5 on the pixels and on the lr), ``iterations``
    times, from the same draws for every backend and dtype."""
    dev = torch.device(DEVICE)
    host = torch.Generator().manual_seed(0)
    net = get_model("ConvNet", 1, 10, (8, 8), **MK).to(dev, dtype)
    x0 = torch.cat([digits.train_images[digits.train_labels == c][:1] for c in range(10)])
    images = _perturbed(x0.double(), x_seed, 1e-7).to(dev, dtype).requires_grad_(True)
    labels = torch.arange(10, device=dev)
    lr = torch.tensor(0.02, dtype=dtype, device=dev, requires_grad=True)
    opt_img = torch.optim.SGD([images], lr=100.0, momentum=0.5)
    opt_lr = torch.optim.SGD([lr], lr=1e-5, momentum=0.5)
    gen = torch.Generator().manual_seed(1)
    for _ in range(iterations):
        e = int(torch.randint(store.num_experts, (1,), generator=host))
        t = int(torch.randint(2, (1,), generator=host))
        start, target = store.pair(e, t, t + 1, device=dev)
        res = match(net, start.to(dtype), target.to(dtype), images, labels, lr, syn_steps=4,
                    batch_syn=5, augment=STRATEGY, generator=gen, backend=backend)
        assert backends.last_used["dsa"] == backend
        opt_img.zero_grad(set_to_none=True)
        opt_lr.zero_grad(set_to_none=True)
        images.grad = res.grad_images.to(dtype)
        lr.grad = res.grad_lr.reshape(()).to(dtype)
        opt_img.step()
        opt_lr.step()
    return {"images": images.detach().double().cpu(), "lr": lr.detach().double().cpu()}


def test_distillation_iteration_float64(store, digits):
    ref = _distill_iterations(store, digits, torch.float64, "torch")
    tri = _distill_iterations(store, digits, torch.float64, "triton")
    x0 = _distill_iterations(store, digits, torch.float64, "torch", iterations=0)
    # the iterations moved the pixels, and both backends moved them alike
    assert relative_error(ref["images"], x0["images"]) > 1e-4
    for k in ref:
        assert relative_error(tri[k], ref[k]) <= 1e-10, (k, relative_error(tri[k], ref[k]))


def test_distillation_iteration_float32(store, digits):
    exact = _distill_iterations(store, digits, torch.float64, "torch")
    tri = _distill_iterations(store, digits, torch.float32, "triton")
    env = dict.fromkeys(exact, ULPS)
    for s in range(PERTURBATIONS):
        a = _distill_iterations(store, digits, torch.float32, "torch", x_seed=s)
        b = _distill_iterations(store, digits, torch.float64, "torch", x_seed=s)
        for k in env:
            env[k] = max(env[k], relative_error(a[k], b[k]))
    for k in exact:
        err = relative_error(tri[k], exact[k])
        assert err <= env[k], (k, err, env)


def test_distill_loop_runs_triton_end_to_end(store, digits, monkeypatch):
    """The real loop (``mtt_fast.distill``) with MTT_FAST_BACKEND=triton: DSA runs in
    Triton every step and the set it learns stays within the reference loop's float32
    sensitivity (its change under 1e-7 perturbations of the data)."""
    kw = dict(store=store, ipc=1, iterations=2, syn_steps=4, expert_epochs=1, max_start_epoch=2,
              lr_img=100.0, lr_lr=1e-5, lr_teacher=0.02, batch_syn=5, num_eval=0,
              progress=False, device=DEVICE, model_kwargs=MK)
    monkeypatch.setenv("MTT_FAST_BACKEND", "torch")
    ref = mtt_fast.distill(data=digits, **kw).images.double()
    spread = 0.0
    for s in range(1, PERTURBATIONS):
        moved = dataclasses.replace(digits, train_images=_perturbed(digits.train_images, s, 1e-7))
        spread = max(spread, relative_error(mtt_fast.distill(data=moved, **kw).images.double(),
                                            ref))
    calls = []
    real = backends.resolve

    def spy(op, backend, device, dtype=None):
        out = real(op, backend, device, dtype)
        calls.append((op, out))
        return out

    monkeypatch.setattr(backends, "resolve", spy)
    monkeypatch.setenv("MTT_FAST_BACKEND", "triton")
    tri = mtt_fast.distill(data=digits, **kw).images.double()
    dsa = [b for op, b in calls if op == "dsa"]
    assert dsa and set(dsa) == {"triton"}, set(dsa)
    assert 0 < spread and relative_error(tri, ref) <= spread, (relative_error(tri, ref), spread)


# ------------------------------------------------------------------ ZCA in the data pipeline


def test_zca_pipeline_triton(monkeypatch):
    """``prepare(zca=True)`` with the Triton ZCA apply: no further from the float64
    whitening of the same fit than the reference's own float32 whitening."""
    tri = mtt_fast.data.prepare("digits", zca=True, zca_backend="triton", device=DEVICE)
    assert backends.last_used["zca"] == "triton"
    ref = mtt_fast.data.prepare("digits", zca=True, zca_backend="torch", device=DEVICE)
    assert backends.last_used["zca"] == "torch"
    z = ref.zca
    for split in ("train", "test"):
        raw = mtt_fast.data.load_dataset("digits", split=split).images
        flat = raw.double().reshape(raw.shape[0], -1) / 255
        exact = ((flat - z.mean.double().cpu()) @ z.matrix.double().cpu()).reshape(raw.shape)
        e_ref = relative_error(getattr(ref, f"{split}_images").double().cpu(), exact)
        e_tri = relative_error(getattr(tri, f"{split}_images").double().cpu(), exact)
        assert 0 < e_ref < 1e-5 and e_tri <= e_ref, (split, e_tri, e_ref)
