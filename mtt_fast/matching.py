"""Trajectory matching: the MTT inner loop and its exact gradient.

A student starts at expert parameters ``start`` (flat, (P,)), takes ``syn_steps`` SGD
steps ``theta_{i+1} = theta_i - lr * g_i`` on (augmented) mini-batches of the synthetic
images, and is scored by ``||theta_N - target||^2 / ||start - target||^2``. :func:`match`
returns that loss and its gradients with respect to the images, the learnable lr and
(soft) labels.

Two modes give the same answer:

* ``unroll``: autograd through all steps (the original MTT code); memory grows with
  ``syn_steps`` because every step's graph is kept.
* ``checkpoint`` (default): a forward sweep without a graph keeps only the flat parameter
  vector at the start of each segment of ``segment`` steps; a backward sweep recomputes one
  segment at a time with its graph and applies the vector-Jacobian products
  ``lambda_i = lambda_{i+1} - lr H_i lambda_{i+1}``,
  ``dL/dX += -lr (dg_i/dX)^T lambda_{i+1}``, ``dL/dlr += -<lambda_{i+1}, g_i>``.
  It is exact (no truncation, unlike TESLA), and its memory is that of ``segment`` steps
  plus one flat vector per segment. Segments are laid out from the end, so the last one is
  full and exactly ``syn_steps - segment`` steps are recomputed (the first segment takes
  the remainder). ``segment="auto"`` picks the fastest exact schedule that fits a memory
  budget: the time grows with the recomputed steps, so that is the largest segment whose
  graph fits (all steps: plain unroll, nothing recomputed); the result says what it chose.

Mini-batch indices and augmentation parameters of every step are drawn once, before the
forward sweep (:func:`make_plan`), and replayed in the backward sweep.
No host-device synchronisation happens inside the sweeps.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from mtt_fast import augment as _aug
from mtt_fast.models.functional import functional_forward, layout

__all__ = ["MatchResult", "StepPlan", "make_plan", "match", "segment_starts", "step_graph_bytes",
           "MODES"]

MODES = ("checkpoint", "unroll")


@dataclass(frozen=True)
class StepPlan:
    """What each student step sees, drawn once and replayed.

    Attributes:
        indices: per step, (b,) int64 indices into the synthetic set, or None (all images).
        aug: per step, :class:`mtt_fast.augment.DSAParams` or None.
    """

    indices: tuple
    aug: tuple

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class MatchResult:
    """Output of :func:`match`.

    Attributes:
        loss: 0-dim tensor, the normalised parameter distance (no host sync).
        grad_images: (n, C, H, W) dL/d images.
        grad_lr: 0-dim dL/d lr.
        grad_labels: dL/d labels for soft labels that require grad, else None.
        segment: the segment length used (``syn_steps`` for unroll).
        stored_bytes: bytes held by the stored flat parameter vectors (checkpoint mode).
        plan: the replayed :class:`StepPlan`.
        recomputed_steps: student steps run twice (forward sweep, then with their graph):
            ``syn_steps - segment``; 0 for unroll.
        schedule: how the segment was chosen, for metrics: ``{"mode", "segment",
            "recomputed_steps", "auto"}`` plus, for ``segment="auto"``, ``"budget_bytes"``
            and ``"step_graph_bytes"`` (the measured graph of one step).
    """

    loss: torch.Tensor
    grad_images: torch.Tensor
    grad_lr: torch.Tensor
    grad_labels: torch.Tensor | None
    segment: int
    stored_bytes: int = 0
    plan: StepPlan | None = field(default=None, repr=False)
    recomputed_steps: int = 0
    schedule: dict = field(default_factory=dict)


def make_plan(
    n: int,
    syn_steps: int,
    batch_syn: int | None = None,
    augment: str | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dsa_mode: str = "S",
    dsa_config: _aug.DSAConfig | None = None,
    host_generator: torch.Generator | None = None,
) -> StepPlan:
    """Draw the mini-batch indices and DSA params of ``syn_steps`` student steps.

    Batches follow the original: a fresh permutation of the ``n`` images split into chunks
    of ``batch_syn``, taken from the end; a new permutation when the chunks run out.
    Index draws use ``generator`` when it is a CPU generator, else ``host_generator``.
    """
    if syn_steps < 1:
        raise ValueError(f"syn_steps must be >= 1, got {syn_steps}")
    b = n if batch_syn is None else int(batch_syn)
    if not 1 <= b <= n:
        raise ValueError(f"batch_syn must be in [1, {n}] (the synthetic set size), got {batch_syn}")
    device = torch.device(device)
    hg = generator if generator is not None and generator.device.type == "cpu" else host_generator
    indices: list = []
    chunks: list = []
    for _ in range(syn_steps):
        if b == n:
            indices.append(None)
            continue
        if not chunks:
            chunks = list(torch.split(torch.randperm(n, generator=hg), b))
        indices.append(chunks.pop())
    aug = []
    for idx in indices:
        size = n if idx is None else len(idx)
        aug.append(
            None
            if not _aug.parse_strategy(augment)
            else _aug.sample(
                size, augment, generator, dsa_mode, device, dsa_config, host_generator=hg
            )
        )
    idx_dev = tuple(None if i is None else i.to(device, non_blocking=True) for i in indices)
    return StepPlan(idx_dev, tuple(aug))


def _step_loss(model, theta, X, Y, label_kind, idx, aug, backend):
    x = X if idx is None else X.index_select(0, idx)
    y = Y if idx is None else Y.index_select(0, idx)
    if aug is not None:
        with record_function("mtt::dsa"):  # a named range for profiles (no cost otherwise)
            x = _aug.apply(x, aug, backend=backend)
    out = functional_forward(model, theta, x, _layout(model))
    if label_kind == "hard":
        return F.cross_entropy(out, y)
    target = y.softmax(dim=1) if label_kind == "logits" else y
    return F.cross_entropy(out, target)


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layout(model: nn.Module):
    # cached per module object: names and shapes do not change while the model is alive
    lay = _LAYOUTS.get(model)
    if lay is None:
        lay = _LAYOUTS[model] = layout(model)
    return lay


def _check_inputs(model, start, target, images, labels, lr, syn_steps):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be (n, C, H, W), got shape {tuple(images.shape)}")
    P = sum(p.numel() for p in model.parameters())
    for name, v in (("start", start), ("target", target)):
        if v.dim() != 1 or v.numel() != P:
            raise ValueError(
                f"{name} must be a flat parameter vector of length {P} for "
                f"{type(model).__name__}, got shape {tuple(v.shape)}"
            )
    n = images.shape[0]
    if labels.shape[0] != n or labels.dim() not in (1, 2):
        raise ValueError(
            f"labels must be (n,) or (n, K) with n = {n} images, got shape {tuple(labels.shape)}"
        )
    if not torch.is_tensor(lr) or lr.numel() != 1:
        raise ValueError("lr must be a scalar tensor")
    if not isinstance(syn_steps, int) or syn_steps < 1:
        raise ValueError(f"syn_steps must be a positive int, got {syn_steps!r}")


def _label_kind(labels: torch.Tensor, label_kind: str) -> str:
    if label_kind == "auto":
        return "hard" if not labels.is_floating_point() else "prob"
    if label_kind not in ("hard", "prob", "logits"):
        raise ValueError(f"label_kind must be auto, hard, prob or logits, got {label_kind!r}")
    if label_kind == "hard" and labels.is_floating_point():
        raise ValueError("label_kind='hard' needs integer class labels (n,)")
    return label_kind


def step_graph_bytes(model, theta, X, Y, label_kind, plan_step=(None, None), backend=None) -> int:
    """Bytes autograd saves for one student step and its double-backward graph."""
    total = 0
    seen: set = set()

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    th = theta.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _step_loss(model, th, X, Y, label_kind, plan_step[0], plan_step[1], backend)
        g = torch.autograd.grad(loss, th, create_graph=True)[0]
        # a vector-Jacobian product through g saves tensors of g's size: count one
        (g * g.detach()).sum()
    return total


_AUTO_CACHE: dict = {}


def _auto_segment(model, theta, X, Y, label_kind, plan, budget, backend) -> tuple[int, dict]:
    """The largest segment whose graph fits ``budget`` (fewest recomputed steps: fastest),
    and what the choice was based on."""
    N = len(plan)
    first = plan.indices[0]
    fused = getattr(model, "uses_fused_blocks", lambda: None)()
    key = (id(model), fused, theta.numel(), tuple(X.shape), X.dtype, X.device, N,
           0 if first is None else len(first), budget)
    if key in _AUTO_CACHE:
        return _AUTO_CACHE[key]
    if budget is None:
        if X.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(X.device)
            budget = int(free * 0.5)
        else:
            try:
                import psutil

                budget = int(psutil.virtual_memory().available * 0.25)
            except ImportError:  # pragma: no cover
                budget = 2 << 30
    per_step = step_graph_bytes(model, theta, X, Y, label_kind,
                                (plan.indices[0], plan.aug[0]), backend)
    k = int(max(1, min(N, budget // max(per_step, 1))))
    _AUTO_CACHE[key] = k, {"budget_bytes": int(budget), "step_graph_bytes": int(per_step)}
    return _AUTO_CACHE[key]


def segment_starts(n_steps: int, k: int) -> list[int]:
    """Starts of the checkpoint segments of ``n_steps`` steps, at most ``k`` steps each,
    laid out from the end: the last segment is full, the first takes the remainder."""
    if k >= n_steps:
        return [0]
    starts = list(range(n_steps - k, 0, -k))[::-1]
    return starts if starts[0] == 0 else [0, *starts]


def match(
    model: nn.Module,
    start: torch.Tensor,
    target: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: torch.Tensor,
    syn_steps: int,
    batch_syn: int | None = None,
    augment: str | None = None,
    generator: torch.Generator | None = None,
    mode: str = "checkpoint",
    segment: int | str = 1,
    *,
    label_kind: str = "auto",
    host_generator: torch.Generator | None = None,
    dsa_mode: str = "S",
    dsa_config: _aug.DSAConfig | None = None,
    backend: str | None = None,
    memory_budget: int | None = None,
    store_on: str = "device",
    plan: StepPlan | None = None,
) -> MatchResult:
    """Run the student for ``syn_steps`` and return the MTT loss and its exact gradients.

    Args:
        model: the student architecture; its own weights are ignored (a functional view over
            the flat vectors is used). Its train/eval mode is used as is (train mode for
            batch-norm batch statistics, as the original).
        start: (P,) expert parameters at the start epoch.
        target: (P,) expert parameters ``expert_epochs`` later.
        images: (n, C, H, W) synthetic images (any requires_grad; gradients are returned).
        labels: (n,) int64 class labels, or (n, K) soft labels (probabilities, or logits with
            ``label_kind="logits"``); a soft-label gradient is returned when they require grad.
        lr: 0-dim student learning rate (learnable).
        syn_steps: N, student SGD steps.
        batch_syn: mini-batch size per step (default: all n images).
        augment: DSA strategy string, or None for no augmentation.
        generator: draws the mini-batches and DSA params (see :func:`make_plan`).
        mode: ``"checkpoint"`` (default) or ``"unroll"``.
        segment: steps whose graph is kept together in checkpoint mode: 1 (constant memory),
            k, or ``"auto"`` (the largest that fits ``memory_budget`` bytes; default half the
            free GPU memory, or a quarter of free host memory).
        label_kind: ``"auto"`` | ``"hard"`` | ``"prob"`` | ``"logits"``.
        host_generator: CPU generator for host-side draws when ``generator`` is a device one.
        dsa_mode, dsa_config: DSA mode ('S' or 'M') and magnitudes.
        backend: DSA kernel backend (see :mod:`mtt_fast.backends`).
        memory_budget: bytes for ``segment="auto"``.
        store_on: ``"device"`` or ``"host"`` (pinned host memory when CUDA is available) for
            the stored parameter vectors.
        plan: a pre-drawn :class:`StepPlan` to replay (overrides the draws).

    Returns:
        :class:`MatchResult`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if store_on not in ("device", "host"):
        raise ValueError(f"store_on must be 'device' or 'host', got {store_on!r}")
    _check_inputs(model, start, target, images, labels, lr, syn_steps)
    kind = _label_kind(labels, label_kind)
    dev, dt = images.device, images.dtype
    X = images.detach().requires_grad_(True)
    soft_grad = kind != "hard" and labels.requires_grad
    Y = labels.detach().to(dev)
    if kind != "hard":
        Y = Y.to(dt).requires_grad_(soft_grad)
    lr_ = lr.detach().to(dev, dt).reshape(()).requires_grad_(True)
    start = start.detach().to(dev, dt)
    target = target.detach().to(dev, dt)
    if plan is None:
        plan = make_plan(X.shape[0], syn_steps, batch_syn, augment, generator, dev,
                         dsa_mode, dsa_config, host_generator)
    elif len(plan) != syn_steps:
        raise ValueError(f"plan has {len(plan)} steps, syn_steps is {syn_steps}")
    denom = (start - target).pow(2).sum()
    wrt = [X, lr_] + ([Y] if soft_grad else [])
    was_training = model.training
    model.train()
    try:
        auto: dict = {}
        if mode == "checkpoint" and segment == "auto":
            segment, auto = _auto_segment(model, start, X, Y, kind, plan, memory_budget,
                                          backend)
        if mode == "checkpoint" and (not isinstance(segment, int) or segment < 1):
            raise ValueError(f"segment must be a positive int or 'auto', got {segment!r}")
        if mode == "unroll" or segment >= syn_steps:
            loss, grads = _unroll(model, start, target, denom, X, Y, lr_, kind, plan, wrt,
                                  backend)
            seg, stored = syn_steps, 0
        else:
            loss, grads, stored = _checkpoint(model, start, target, denom, X, Y, lr_, kind,
                                              plan, wrt, segment, store_on, backend)
            seg = segment
    finally:
        model.train(was_training)
    return MatchResult(
        loss=loss.detach(),
        grad_images=grads[0],
        grad_lr=grads[1].reshape(lr.shape),
        grad_labels=grads[2] if soft_grad else None,
        segment=seg,
        stored_bytes=stored,
        plan=plan,
        recomputed_steps=syn_steps - seg,
        schedule={"mode": mode, "segment": seg, "recomputed_steps": syn_steps - seg,
                  "auto": bool(auto), **auto},
    )


def _sgd(theta, lr, g):
    # the student's update, in a named range so profiles can attribute it (and its backward)
    with record_function("mtt::sgd"):
        return theta - lr * g


def _run_steps(model, theta, X, Y, lr_, kind, plan, lo, hi, backend):
    """Steps ``lo..hi-1`` from ``theta`` with the full (double-differentiable) graph."""
    for i in range(lo, hi):
        loss = _step_loss(model, theta, X, Y, kind, plan.indices[i], plan.aug[i], backend)
        g = torch.autograd.grad(loss, theta, create_graph=True)[0]
        theta = _sgd(theta, lr_, g)
    return theta


def _unroll(model, start, target, denom, X, Y, lr_, kind, plan, wrt, backend):
    with torch.enable_grad():
        theta = start.clone().requires_grad_(True)
        theta = _run_steps(model, theta, X, Y, lr_, kind, plan, 0, len(plan), backend)
        loss = (theta - target).pow(2).sum() / denom
        grads = torch.autograd.grad(loss, wrt)
    return loss, list(grads)


def _checkpoint(model, start, target, denom, X, Y, lr_, kind, plan, wrt, k, store_on, backend):
    N = len(plan)
    bounds = segment_starts(N, k)  # the last segment is full
    slot = {b: j for j, b in enumerate(bounds)}
    last = bounds[-1]
    host = store_on == "host"
    pin = host and torch.cuda.is_available()
    stored: list[torch.Tensor] = []
    lr_d = lr_.detach()
    Xd = X.detach()
    Yd = Y.detach()
    theta = start.detach().requires_grad_(True)
    # Forward sweep without a graph up to the last segment's start, storing segment starts.
    with torch.enable_grad():
        for i in range(last):
            if i in slot:
                if host:
                    buf = torch.empty(theta.shape, dtype=theta.dtype, pin_memory=pin)
                    stored.append(buf.copy_(theta.detach(), non_blocking=pin))
                else:
                    stored.append(theta.detach())
            loss = _step_loss(model, theta, Xd, Yd, kind, plan.indices[i], plan.aug[i], backend)
            g = torch.autograd.grad(loss, theta)[0]
            theta = _sgd(theta.detach(), lr_d, g).requires_grad_(True)
    stored_bytes = sum(t.numel() * t.element_size() for t in stored) + theta.numel() * (
        theta.element_size()
    )
    # The last segment runs with its graph right away: it needs no recomputation.
    th0 = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        th = _run_steps(model, th0, X, Y, lr_, kind, plan, last, N, backend)
    diff = th.detach() - target
    loss = diff.pow(2).sum() / denom
    lam = 2.0 * diff / denom  # dL/dtheta_N
    acc = [torch.zeros_like(w) for w in wrt]
    for s in reversed(bounds):
        if s != last:  # recompute the segment from its stored start, with its graph
            th0 = stored[slot[s]].to(X.device, non_blocking=True).requires_grad_(True)
            end = bounds[slot[s] + 1]
            with torch.enable_grad():
                th = _run_steps(model, th0, X, Y, lr_, kind, plan, s, end, backend)
        inputs = list(wrt) + ([th0] if s > 0 else [])
        grads = torch.autograd.grad(th, inputs, grad_outputs=lam, allow_unused=True)
        for j in range(len(wrt)):
            if grads[j] is not None:
                acc[j] += grads[j]
        if s > 0:
            lam = grads[-1]
        del th, grads
    return loss, acc, stored_bytes


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (host float; for tests and benchmarks)."""
    return float((a - b).norm() / b.norm().clamp_min(torch.finfo(b.dtype).tiny))

