"""ZCA apply on 10,000 CIFAR-sized images (3x32x32, D = 3072): reference vs the backends
available on the benchmark device.

    MTT_FAST_BENCH_DEVICE=cuda python -m pytest benchmarks/test_bench_zca.py --benchmark-only -q

Device: ``MTT_FAST_BENCH_DEVICE`` (default ``cpu``). On CPU: the reference and the compiled
op when built (the Triton interpreter is far too slow for 10k images); on CUDA also Triton.
Each case checks its output against the reference before timing, synchronises the device
inside the timed call, and records in ``extra_info``: achieved bandwidth (bytes read +
written / mean time), GFLOP/s (the op is a (N, D) x (D, D) product: at D = 3072 it is
compute-bound on any hardware, ~1200 flop per byte), the speed-up over the reference,
peak device memory (CUDA), and on CUDA the device-to-device copy bandwidth measured in
the same run, with the ratio to it.
"""

from __future__ import annotations

import os
import platform

import pytest
import torch

from mtt_fast import backends
from mtt_fast.ops.zca import reference as ref
from mtt_fast.ops.zca import zca_apply

N, C, H, W = 10_000, 3, 32, 32
D = C * H * W
DEVICE = torch.device(os.environ.get("MTT_FAST_BENCH_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("MTT_FAST_BENCH_DEVICE=cuda but no GPU is visible", allow_module_level=True)

_ROUNDS = 3 if DEVICE.type == "cpu" else 20  # a CPU call is seconds (189 GFLOP)
_ref_time: dict[str, float] = {}


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _backends_here() -> list[str]:
    avail = backends.available("zca", DEVICE)
    names = ["torch"]
    if "native" in avail:
        names.append("native")
    if DEVICE.type == "cuda" and "triton" in avail:
        names.append("triton")
    return names


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (N, C, H, W), generator=g, dtype=torch.uint8)
    mean = torch.rand(D, generator=g) * 0.2 + 0.4
    # a symmetric whitening-like matrix; the timing does not depend on its values and a
    # real fit (eigh of a 3072^2 covariance) would dominate the CPU run
    a = torch.randn(D, D, generator=g) / D**0.5
    matrix = (a + a.T) / 2 + torch.eye(D)
    return {
        "uint8": x8.to(DEVICE),
        "float32": (x8.float() / 255).to(DEVICE),
        "mean": mean.to(DEVICE),
        "matrix": matrix.to(DEVICE),
    }


def _copy_bandwidth(nbytes: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write) on CUDA."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=DEVICE)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 20
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize(DEVICE)
    return 2 * src.numel() * 4 * reps / (start.elapsed_time(end) / 1e3)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("backend", _backends_here())
def test_zca_apply(benchmark, problem, backend: str, dtype: str) -> None:
    x, mean, matrix = problem[dtype], problem["mean"], problem["matrix"]

    # correctness first, on a slice (the full reference is what is timed below)
    sl = x[:512]
    want = ref.zca_apply(sl, mean, matrix)
    got = zca_apply(sl, mean, matrix, backend=backend)
    assert backends.last_used["zca"] == backend
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5 * scale)
    del want, got

    def run():
        out = zca_apply(x, mean, matrix, backend=backend)
        _sync()
        return out

    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEVICE)
        base = torch.cuda.memory_allocated(DEVICE)
    benchmark.group = f"zca_apply {N}x{C}x{H}x{W} {dtype} on {DEVICE.type}"
    benchmark.pedantic(run, rounds=_ROUNDS, iterations=1, warmup_rounds=1)

    t = benchmark.stats.stats.mean
    nbytes = x.numel() * x.element_size() + N * D * 4 + D * D * 4 + D * 4
    info = benchmark.extra_info
    info.update(
        device=str(DEVICE),
        hardware=(torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda"
                  else platform.processor() or platform.machine()),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        backend=backend,
        bytes_moved=nbytes,
        bandwidth_GBps=nbytes / t / 1e9,
        gflops=2 * N * D * D / t / 1e9,
    )
    if backend == "torch":
        _ref_time[dtype] = t
    elif dtype in _ref_time:
        info["speedup_vs_torch"] = _ref_time[dtype] / t
    if DEVICE.type == "cuda":
        info["peak_bytes"] = torch.cuda.max_memory_allocated(DEVICE) - base
        copy_bw = _copy_bandwidth(nbytes)
        info["copy_bandwidth_GBps"] = copy_bw / 1e9
        info["fraction_of_copy_bandwidth"] = nbytes / t / copy_bw
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
