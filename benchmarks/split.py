"""Split a profiled MTT iteration into conv / norm block / DSA / optimizer / other.

Every profiled op's self CPU time goes to a category: the nearest enclosing op or range
whose name says it (convolutions; GroupNorm, ReLU / threshold, average pooling and the fused
``norm_block`` ops; the ``mtt::dsa`` range and DSA kernels; the ``mtt::sgd`` range of the
student's update). An op run by the autograd engine inside a backward node that names none
of them (``MulBackward0``, ...) goes where the forward op that created the node went, found
through the autograd sequence number, recursively: the elementwise ops PyTorch composes
GroupNorm's double backward from therefore count as the norm block, and the backward of
the student's update as the optimizer.
"""

from __future__ import annotations

import torch

_CPU = torch.autograd.DeviceType.CPU
CATEGORIES = ("conv", "norm block", "dsa", "optimizer", "other")
_NODE = "autograd::engine::evaluate_function"
_NORM = ("group_norm", "groupnorm", "norm_block", "normblock", "relu", "threshold",
         "avg_pool", "avgpool")
_DSA = ("mtt::dsa", "dsa_", "grid_sampler", "affine_grid", "_affine", "_flip", "_crop",
        "_cutout", "_color")


def _by_name(name: str) -> str | None:
    n = name.lower()
    if n == "mtt::sgd":
        return "optimizer"
    if any(k in n for k in _DSA):
        return "dsa"
    if "conv" in n:
        return "conv"
    if any(k in n for k in _NORM):
        return "norm block"
    return None


def split(events, device_time: bool = False) -> dict[str, float]:
    """Seconds of self CPU time (``device_time``: self GPU time, the kernels an op
    launched) per category, from ``torch.profiler.profile(...).events()``."""
    fwd_of: dict[int, object] = {}
    for e in sorted(events, key=lambda e: e.time_range.start):
        if e.sequence_nr >= 0 and not e.name.startswith(_NODE) and e.sequence_nr not in fwd_of:
            fwd_of[e.sequence_nr] = e
    memo: dict[int, str] = {}

    def cat(e, depth=0) -> str:
        key = id(e)
        if key in memo:
            return memo[key]
        out, q = "other", e
        while q is not None:
            c = _by_name(q.name)
            if c is not None:
                out = c
                break
            if q.name.startswith(_NODE):
                f = fwd_of.get(q.sequence_nr)
                if f is not None and depth < 64:
                    out = cat(f, depth + 1)
                break
            q = q.cpu_parent
        memo[key] = out
        return out

    tot = dict.fromkeys(CATEGORIES, 0.0)
    for e in events:
        if device_time and getattr(e, "device_type", None) != _CPU:
            continue  # a kernel: counted in the self device time of the op that launched it
        t = (getattr(e, "self_device_time_total", 0) if device_time else e.self_cpu_time_total)
        tot[cat(e)] += t / 1e6
    return tot
