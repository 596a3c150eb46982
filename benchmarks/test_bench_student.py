"""The student step at the CIFAR-10 IPC 10 preset shapes: the original path against the
fused ConvNet block, time per iteration (interleaved, one process), peak memory, and the
split of an iteration (conv / norm block / DSA / optimizer / other).

Variants (all through :func:`mtt_fast.matching.match`, same plan, same threads):

* ``original``: ``unroll`` with the reference DSA backend and the plain modules
  (``nn.Conv2d``, ``nn.GroupNorm``, ``nn.ReLU``, ``nn.AvgPool2d``): the original MTT code
  path as this library reproduces it (measured within 10 % of the original code);
* ``unroll``, ``checkpoint`` (segment 1) and ``auto`` (``segment="auto"``, default budget):
  the fused block (``mtt_fast.ops.norm_block`` + ``mtt_fast.ops.conv2d``), compiled DSA.

Run (CI-sized: 4 student steps; the ratio is shown to hold at 30 in the results)::

    pytest benchmarks/test_bench_student.py --benchmark-only -s

Knobs: ``MTT_FAST_BENCH_DEVICE`` (cpu | cuda, default cpu), ``MTT_FAST_BENCH_STUDENT_STEPS`` (default 4; ``MTT_FAST_BENCH_STUDENT_FULL=1`` runs
the preset's 30), ``MTT_FAST_BENCH_THREADS`` (default 1), ``MTT_FAST_BENCH_ROUNDS``
(default 2), ``MTT_FAST_BENCH_MALLOPT`` (default 1: glibc keeps freed heap memory, see
:func:`mtt_fast.utils.keep_freed_memory`; applies to every variant alike),
``MTT_FAST_BENCH_SPLIT_STEPS`` (steps of the profiled iterations, default min(steps, 5)).
Results go to ``benchmarks/results/student-<device>-<steps>steps.json`` (with the command,
machine, versions and load). On CUDA, ``test_student_launches_per_step`` counts the kernel
launches of one student step (forward, backward with graph, double backward).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from split import CATEGORIES, split  # noqa: E402

FULL = os.environ.get("MTT_FAST_BENCH_STUDENT_FULL", "0") == "1"
STEPS = 30 if FULL else int(os.environ.get("MTT_FAST_BENCH_STUDENT_STEPS", "4"))
THREADS = int(os.environ.get("MTT_FAST_BENCH_THREADS", "1"))
ROUNDS = int(os.environ.get("MTT_FAST_BENCH_ROUNDS", "2"))
MALLOPT = os.environ.get("MTT_FAST_BENCH_MALLOPT", "1") == "1"
DEVICE = os.environ.get("MTT_FAST_BENCH_DEVICE", "cpu")
SPLIT_STEPS = int(os.environ.get("MTT_FAST_BENCH_SPLIT_STEPS", str(min(STEPS, 5))))
STRATEGY = "color_crop_cutout_flip_scale_rotate"
VARIANTS = {
    "original": dict(mode="unroll", segment=1, backend="torch", fused=False),
    "unroll": dict(mode="unroll", segment=1, backend=None, fused=True),
    "checkpoint": dict(mode="checkpoint", segment=1, backend=None, fused=True),
    "auto": dict(mode="checkpoint", segment="auto", backend=None, fused=True),
}
RESULTS = Path(__file__).resolve().parent / "results"
_OUT: dict = {}

_CHILD = r"""
import json, resource, sys, torch
cfg = json.loads(sys.argv[1])

def status(key):
    # this process's own resident-set figures (ru_maxrss would include the parent's RSS
    # at fork, which Linux carries over execve)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

torch.set_num_threads(cfg["threads"])
sys.path.insert(0, cfg["bench_dir"])
from test_bench_student import setup, run_variant
prob = setup(cfg["steps"])
cuda = cfg["device"] == "cuda"
if cuda:
    run_variant(prob, cfg["variant"])  # warm-up
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    try:  # reset the high-water mark (Linux >= 4.0), so setup's transients do not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = status("VmRSS")
r = run_variant(prob, cfg["variant"])
if cuda:
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
else:
    peak = status("VmHWM") - base
print(json.dumps({"peak": peak, "stored": r.stored_bytes, "segment": r.segment}))
"""


def setup(steps: int):
    """The preset's problem: ConvNet (width 128, depth 3), 100 CIFAR-sized images, 10
    classes, full DSA; one plan replayed by every variant."""
    from mtt_fast.matching import make_plan
    from mtt_fast.models import flatten, get_model

    dev = torch.device(DEVICE)
    torch.manual_seed(0)
    net = get_model("ConvNet", 3, 10, (32, 32)).to(dev)
    start = flatten(net).to(dev)
    target = start + 0.01 * torch.randn_like(start)
    X = torch.randn(100, 3, 32, 32).to(dev)
    y = (torch.arange(100) % 10).to(dev)
    lr = torch.tensor(0.01, device=dev)
    plan = make_plan(100, steps, None, STRATEGY, torch.Generator().manual_seed(0), dev)
    return net, start, target, X, y, lr, plan, steps


def run_variant(prob, name: str):
    from mtt_fast.matching import match

    net, start, target, X, y, lr, plan, steps = prob
    v = VARIANTS[name]
    net.fused = v["fused"]
    r = match(net, start, target, X, y, lr, steps, plan=plan, mode=v["mode"],
              segment=v["segment"], backend=v["backend"])
    if X.device.type == "cuda":
        torch.cuda.synchronize()
    return r


def _env() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else None
    return {"device": DEVICE, "gpu": gpu, "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(), "threads": THREADS, "loadavg_at_start": load,
            "mallopt_keep_freed": MALLOPT, "command": " ".join(sys.argv),
            "env": {k: v for k, v in os.environ.items() if k.startswith("MTT_FAST_")}}


def _save() -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"student-{DEVICE}-{STEPS}steps.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(_OUT)
    old.pop("env", None)
    old["steps"] = STEPS
    path.write_text(json.dumps(old, indent=2) + "\n")


@pytest.fixture(scope="module", autouse=True)
def _threads():
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("MTT_FAST_BENCH_DEVICE=cuda but no GPU is visible")
    prev = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    if MALLOPT:
        from mtt_fast.utils import keep_freed_memory

        keep_freed_memory()
    yield
    torch.set_num_threads(prev)


def test_student_time_interleaved(benchmark):
    """Time per iteration, variants round-robin in rotating order, min over rounds."""
    from mtt_fast.matching import relative_error

    prob = setup(STEPS)
    ref = run_variant(prob, "original")  # warm-up, and the correctness oracle
    errs, segments = {}, {}
    for name in VARIANTS:  # correctness before timing (also each variant's warm-up)
        r = run_variant(prob, name)
        errs[name] = relative_error(r.grad_images, ref.grad_images)
        segments[name] = r.segment
        # float32: every path carries its own ~1e-3 roundoff (float64 parity is in tests/)
        assert errs[name] <= 2e-2, (name, errs[name])

    def run_all():
        best = dict.fromkeys(VARIANTS, float("inf"))
        names = list(VARIANTS)
        for r in range(ROUNDS):
            for name in names[r % len(names):] + names[: r % len(names)]:
                t = time.perf_counter()
                run_variant(prob, name)
                best[name] = min(best[name], time.perf_counter() - t)
        return best

    best = benchmark.pedantic(run_all, rounds=1, iterations=1)
    speedup = {k: best["original"] / v for k, v in best.items()}
    benchmark.group = f"student cifar10-ipc10 {STEPS} steps"
    benchmark.extra_info.update({f"min_s_{k}": v for k, v in best.items()})
    benchmark.extra_info.update({f"speedup_{k}": v for k, v in speedup.items()})
    _OUT["time"] = {"min_seconds": best, "speedup_vs_original": speedup, "rounds": ROUNDS,
                    "segments": segments, "rel_err_grad_images_vs_original": errs,
                    "env": _env()}
    _save()
    print(f"\n[student] {STEPS} steps, {THREADS} thread(s), min over {ROUNDS} rounds: " + ", ".join(
        f"{k} {best[k]:.2f}s ({speedup[k]:.2f}x, segment {segments[k]})" for k in VARIANTS))
    assert speedup["unroll"] > 1.0 and speedup["checkpoint"] > 1.0, speedup


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_student_peak_memory(benchmark, variant):
    """Peak resident growth of one iteration in a fresh process (VmHWM - VmRSS before it;
    on CUDA the allocator's peak)."""
    cfg = dict(variant=variant, steps=STEPS, threads=THREADS, device=DEVICE,
               bench_dir=str(Path(__file__).resolve().parent))
    if variant == "original" and STEPS > 10 and DEVICE == "cpu":
        import psutil

        need = 340e6 * STEPS  # ~9.8 GB at 30 steps
        if need > 0.8 * psutil.virtual_memory().available:
            pytest.skip(f"original unroll needs ~{need / 2**30:.1f} GiB")

    def child():
        out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    res = benchmark.pedantic(child, rounds=1, iterations=1)
    benchmark.group = f"student memory {STEPS} steps"
    benchmark.extra_info.update(res)
    _OUT.setdefault("peak_bytes", {})[variant] = res["peak"]
    _OUT.setdefault("stored_bytes", {})[variant] = res["stored"]
    _OUT["memory_env"] = _env()
    if "original" in _OUT["peak_bytes"]:
        _OUT.setdefault("peak_vs_original", {})[variant] = (
            res["peak"] / max(_OUT["peak_bytes"]["original"], 1))
    _save()
    print(f"\n[student memory] {variant}: peak {res['peak'] / 2**20:.0f} MiB "
          f"(segment {res['segment']})")


def test_student_split(benchmark):
    """The split of one profiled iteration, original vs fused (unroll and checkpoint)."""
    from torch.profiler import ProfilerActivity, profile

    prob = setup(SPLIT_STEPS)
    out = {}

    def profile_all():
        for name in ("original", "unroll", "checkpoint"):
            run_variant(prob, name)  # warm-up
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
            with profile(activities=acts) as p:
                t = time.perf_counter()
                run_variant(prob, name)
                wall = time.perf_counter() - t
            s = split(p.events(), device_time=DEVICE == "cuda")
            tot = sum(s.values())
            out[name] = {"seconds": s, "fraction": {k: v / tot for k, v in s.items()},
                         "wall_profiled": wall}
        return out

    benchmark.pedantic(profile_all, rounds=1, iterations=1)
    benchmark.group = f"student split {SPLIT_STEPS} steps"
    _OUT["split"] = {"steps": SPLIT_STEPS, **out, "env": _env()}
    _save()
    what = "GPU" if DEVICE == "cuda" else "CPU"
    print(f"\n[split] {SPLIT_STEPS} steps, profiled self {what} seconds (fraction):")
    for name, r in out.items():
        print(f"  {name:<10s} " + "  ".join(
            f"{k} {r['seconds'][k]:.2f}s ({100 * r['fraction'][k]:.0f}%)" for k in CATEGORIES))
    assert out["original"]["seconds"]["norm block"] > out["checkpoint"]["seconds"]["norm block"]


def test_student_launches_per_step(benchmark):
    """CUDA kernel launches of one student step (forward, backward with its graph, double
    backward, as ``unroll`` runs it), original vs fused. CUDA only."""
    if DEVICE != "cuda":
        pytest.skip("counts CUDA kernel launches: MTT_FAST_BENCH_DEVICE=cuda")
    from torch.profiler import ProfilerActivity, profile

    prob = setup(1)
    out = {}

    def count_all():
        for name in ("original", "unroll"):
            run_variant(prob, name)
            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
                run_variant(prob, name)
            out[name] = sum(1 for e in p.events()
                            if e.device_type == torch.autograd.DeviceType.CUDA)
        return out

    benchmark.pedantic(count_all, rounds=1, iterations=1)
    _OUT["launches_per_step"] = {**out, "env": _env()}
    _save()
    print(f"\n[launches] one student step (fwd + bwd + double bwd): {out}")


def test_conv_memory_format(benchmark):
    """NCHW vs channels-last for the preset's three convolutions: forward, backward with
    its graph, double backward (min over rounds, one thread). The fused path keeps NCHW
    where this says it is faster."""
    import torch.nn.functional as F

    dev = torch.device(DEVICE)
    out = {}

    def one(fmt, cin, size):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(100, cin, size, size, generator=g).to(dev)
        w = torch.randn(128, cin, 3, 3, generator=g).to(dev)
        if fmt == "channels_last":
            x = x.to(memory_format=torch.channels_last)
            w = w.to(memory_format=torch.channels_last)
        x.requires_grad_(True)
        w.requires_grad_(True)
        def now():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter()

        best = [float("inf")] * 3
        for _ in range(3):
            t0 = now()
            y = F.conv2d(x, w, padding=1)
            t1 = now()
            gy = torch.ones_like(y).requires_grad_(True)
            t2 = now()
            gx, gw = torch.autograd.grad(y, (x, w), gy, create_graph=True)
            t3 = now()
            s = gx.sum() + gw.sum()
            t4 = now()
            torch.autograd.grad(s, (x, w, gy))
            t5 = now()
            best = [min(a, b) for a, b in zip(best, (t1 - t0, t3 - t2, t5 - t4))]
        return dict(zip(("forward", "backward", "double_backward"), best))

    def run_all():
        for cin, size in ((3, 32), (128, 16), (128, 8)):
            for fmt in ("contiguous", "channels_last"):
                out[f"{cin}x{size}x{size} {fmt}"] = one(fmt, cin, size)
        return out

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    _OUT["conv_memory_format"] = {**out, "env": _env()}
    _save()
    print("\n[conv format] seconds (forward, backward, double backward):")
    for k, v in out.items():
        print(f"  {k:<28s} " + "  ".join(f"{v[p]:.4f}" for p in v))


def test_conv_rate(benchmark):
    """How close the convolutions run to this core's matrix-multiply rate: GFLOP/s of the
    preset's convolutions (forward, backward-data, backward-weights) against a plain GEMM of
    the same size, and the least time the nine convolution-sized products of one student
    step (forward 1, the student's gradient 2, its double backward 4, the backward through
    the forward 2; 8 for the first layer) take at the best of these rates: a floor for
    ``unroll`` that only fewer FLOPs (e.g. Winograd) or a faster GEMM can lower."""
    import torch.nn.functional as F

    dev = torch.device(DEVICE)
    out: dict = {}

    def best_of(fn, n=3):
        t = float("inf")
        for _ in range(n):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = min(t, time.perf_counter() - t0)
        return t

    def one(cin: int, size: int) -> dict:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(100, cin, size, size, generator=g).to(dev)
        w = torch.randn(128, cin, 3, 3, generator=g).to(dev)
        gy = torch.randn(100, 128, size, size, generator=g).to(dev)
        a = torch.randn(128, cin * 9, generator=g).to(dev)
        b = torch.randn(cin * 9, 100 * size * size, generator=g).to(dev)
        bw = torch.ops.aten.convolution_backward
        conv = ((1, 1), (1, 1), (1, 1), False, (0, 0), 1)
        return {
            "gemm": best_of(lambda: a @ b),
            "forward": best_of(lambda: F.conv2d(x, w, padding=1)),
            "backward_data": best_of(lambda: bw(gy, x, w, None, *conv, (True, False, False))),
            "backward_weights": best_of(lambda: bw(gy, x, w, None, *conv, (False, True, False))),
        }

    def run_all():
        floor = 0.0
        for cin, size in ((3, 32), (128, 16), (128, 8)):
            flop = 2 * 100 * size * size * 128 * cin * 9
            times = one(cin, size)
            out[f"{cin}x{size}x{size}"] = {
                k: {"seconds": v, "gflops": flop / v / 1e9} for k, v in times.items()
            }
            floor += (8 if cin == 3 else 9) * min(times.values())  # the fastest of the four
        out["step_conv_floor_seconds"] = floor
        return out

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    _OUT["conv_rate"] = {**out, "env": _env()}
    _save()
    print("\n[conv rate] GFLOP/s (gemm, forward, backward data, backward weights):")
    for k, v in out.items():
        if isinstance(v, dict):
            print(f"  {k:<12s} " + "  ".join(f"{p} {v[p]['gflops']:.1f}" for p in v))
    print(f"  one student step's convolutions at the best rate: "
          f">= {out['step_conv_floor_seconds']:.3f} s")  # fmt: skip
