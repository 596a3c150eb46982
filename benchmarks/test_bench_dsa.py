"""DSA forward + backward, reference vs the compiled ("native") and Triton backends of
``mtt_fast.ops.dsa``, per augmentation group.

Run: ``python -m pytest benchmarks/test_bench_dsa.py --benchmark-only -q``
(``MTT_FAST_BENCH_DEVICE=cuda`` for the GPU). Each case checks the native result against
the reference before timing; the geometric-mean speedup is printed at the end and
written to ``.benchmarks/speedups.json``.
"""

from __future__ import annotations

import pytest
import torch

from mtt_fast import _ext, backends
from mtt_fast.augment import DSAConfig, DSAParams, _sample_group, resolve
from mtt_fast.ops import dsa
from mtt_fast.ops.dsa import reference as ref

GROUPS = ("scale", "rotate", "flip", "crop", "cutout", "color")
BATCHES = (100, 256)
SIZES = (32, 64)
IMPLS = ("reference", "native", "triton")


def _ops_for(group: str, B: int, H: int, W: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    ops = _sample_group(group, B, DSAConfig(), g, device, same=False)
    return resolve(DSAParams(tuple(ops), B), H, W)


class _Dispatched:
    """The ops of :mod:`mtt_fast.ops.dsa` pinned to one backend (its autograd Function)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __getattr__(self, op: str):
        return lambda *a, **k: getattr(dsa, op)(*a, **k, backend=self.backend)


def _run(mod, ops, x, up):
    y = x
    for name, a in ops:
        y = getattr(mod, name)(y, **a)
    (grad,) = torch.autograd.grad(y, x, up)
    return y, grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"3x{s}x{s}")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("group", GROUPS)
def test_dsa_fwd_bwd(benchmark, bench_device, speedups, timed, group, batch, size, impl):
    if impl == "native" and not _ext.has_kernel("dsa_affine", bench_device.type):
        pytest.skip(f"no native DSA kernels for {bench_device.type}: {_ext.load_error()}")
    if impl == "triton" and (bench_device.type != "cuda" or not backends.triton_importable()):
        pytest.skip("Triton is benchmarked on a GPU only (on CPU it is the interpreter)")
    case = f"dsa/{group}/b{batch}/3x{size}x{size}"
    benchmark.group = case
    ops = _ops_for(group, batch, size, size, bench_device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g).to(bench_device).requires_grad_(True)
    up = torch.randn(batch, 3, size, size, generator=g).to(bench_device)
    mod = ref if impl == "reference" else _Dispatched(impl)
    y, grad = _run(mod, ops, x, up)
    if impl != "reference":  # correctness before timing
        y_ref, grad_ref = _run(ref, ops, x, up)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=5e-5)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=5e-5)
    if bench_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench_device)
    benchmark.pedantic(
        timed(lambda: _run(mod, ops, x, up), bench_device), rounds=20, iterations=1, warmup_rounds=2
    )
    peak = torch.cuda.max_memory_allocated(bench_device) if bench_device.type == "cuda" else None
    if peak is not None:
        benchmark.extra_info["peak_bytes"] = peak
    speedups.add(case, impl, benchmark.stats.stats.median, peak)
