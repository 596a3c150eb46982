"""Trajectory matching: peak memory and time per iteration, checkpoint vs unroll.

Run::

    pytest benchmarks/test_bench_matching.py --benchmark-only \
        --benchmark-json benchmarks/results/matching-cpu.json

Environment knobs: ``MTT_FAST_BENCH_DEVICE`` (cpu | cuda, default cpu),
``MTT_FAST_BENCH_STEPS`` (default ``10,20,40,80``), ``MTT_FAST_BENCH_IPC`` (default
``10,50``), ``MTT_FAST_BENCH_BATCH50`` (batch_syn used at IPC 50 on CPU, default 100; the
CUDA run uses the whole set unless set).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` around one iteration; on CPU the
peak resident set of a fresh subprocess running one iteration, minus its resident set just
before the iteration (torch's CPU allocator returns large blocks to the OS, so the
high-water mark is the iteration's own). ``stored_bytes`` (the flat parameter vectors kept
by ``checkpoint``) is reported beside it and subtracted for the growth criterion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

DEVICE = os.environ.get("MTT_FAST_BENCH_DEVICE", "cpu")
STEPS = [int(s) for s in os.environ.get("MTT_FAST_BENCH_STEPS", "10,20,40,80").split(",")]
IPCS = [int(s) for s in os.environ.get("MTT_FAST_BENCH_IPC", "10,50").split(",")]
STRATEGY = "color_crop_cutout_flip_scale_rotate"

_CHILD = r"""
import json, resource, sys, time, torch
from mtt_fast.models import get_model, flatten
from mtt_fast.matching import match, make_plan
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
dev = torch.device(cfg["device"])
net = get_model("ConvNet", 3, 10, (32, 32)).to(dev)
start = flatten(net).to(dev)
target = start + 0.01 * torch.randn_like(start)
n = 10 * cfg["ipc"]
X = torch.randn(n, 3, 32, 32, device=dev)
y = (torch.arange(n) % 10).to(dev)
lr = torch.tensor(0.01, device=dev)
plan = make_plan(n, cfg["steps"], cfg["batch"], cfg["strategy"],
                 torch.Generator().manual_seed(0), dev)
if dev.type == "cuda":
    match(net, start, target, X, y, lr, cfg["steps"], plan=plan, mode=cfg["mode"],
          segment=cfg["segment"])  # warm-up
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
r = match(net, start, target, X, y, lr, cfg["steps"], plan=plan, mode=cfg["mode"],
          segment=cfg["segment"])
if dev.type == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t
if dev.type == "cuda":
    peak = torch.cuda.max_memory_allocated() - base
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(json.dumps({"peak": peak, "stored": r.stored_bytes, "seconds": dt,
                  "segment": r.segment, "loss": float(r.loss)}))
"""


def _run_child(cfg: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(cfg)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _available_bytes() -> int:
    if DEVICE == "cuda":
        return torch.cuda.mem_get_info()[0]
    import psutil

    return psutil.virtual_memory().available


def _batch(ipc: int):
    if ipc == 50:
        env = os.environ.get("MTT_FAST_BENCH_BATCH50")
        if env:
            return None if env == "all" else int(env)
        return 100 if DEVICE == "cpu" else None
    return None


_MEM: dict = {}


@pytest.mark.parametrize("ipc", IPCS)
@pytest.mark.parametrize("mode", ["unroll", "checkpoint"])
@pytest.mark.parametrize("steps", STEPS)
def test_peak_memory_vs_steps(benchmark, ipc, mode, steps):
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("MTT_FAST_BENCH_DEVICE=cuda but no GPU is visible")
    cfg = dict(device=DEVICE, ipc=ipc, steps=steps, mode=mode, segment=1,
               batch=_batch(ipc), strategy=STRATEGY)
    known = [(s, r) for (i, m, s), r in _MEM.items() if i == ipc and m == mode]
    if known and mode == "unroll":
        # unroll memory is linear in the steps: do not run what cannot fit this machine
        s0, r0 = max(known)
        need = r0["peak"] * steps / s0
        have = _available_bytes()
        if need > 0.7 * have:
            pytest.skip(f"unroll at {steps} steps would need ~{need / 2**30:.1f} GiB "
                        f"(measured {r0['peak'] / 2**30:.2f} GiB at {s0}); "
                        f"{have / 2**30:.1f} GiB available")
    res = benchmark.pedantic(_run_child, args=(cfg,), rounds=1, iterations=1)
    benchmark.group = f"memory ipc{ipc} {mode}"
    benchmark.extra_info.update(cfg)
    benchmark.extra_info.update(res)
    graph = res["peak"] - res["stored"]
    benchmark.extra_info["peak_minus_stored"] = graph
    _MEM[(ipc, mode, steps)] = res
    print(f"\n[memory] ipc={ipc} mode={mode} steps={steps}: peak={res['peak'] / 2**20:.1f} MiB "
          f"stored={res['stored'] / 2**20:.1f} MiB peak-stored={graph / 2**20:.1f} MiB "
          f"time={res['seconds']:.2f}s")
    lo, hi = min(STEPS), max(STEPS)
    if steps == hi and (ipc, mode, lo) in _MEM and lo < hi:
        a = _MEM[(ipc, mode, lo)]
        ratio = (res["peak"] - res["stored"]) / max(a["peak"] - a["stored"], 1)
        benchmark.extra_info[f"growth_{lo}_to_{hi}"] = ratio
        print(f"[memory] ipc={ipc} {mode}: peak(minus stored) at {hi} / at {lo} steps = "
              f"{ratio:.2f}")
        if mode == "checkpoint":
            assert ratio <= 1.25, f"checkpoint peak grew {ratio:.2f}x from {lo} to {hi} steps"


# ---- time per iteration, both modes in one process --------------------------------------

def _setup_time(ipc: int, steps: int):
    from mtt_fast.matching import make_plan
    from mtt_fast.models import flatten, get_model

    torch.manual_seed(0)
    dev = torch.device(DEVICE)
    net = get_model("ConvNet", 3, 10, (32, 32)).to(dev)
    start = flatten(net).to(dev)
    target = start + 0.01 * torch.randn_like(start)
    n = 10 * ipc
    X = torch.randn(n, 3, 32, 32, device=dev)
    y = (torch.arange(n) % 10).to(dev)
    lr = torch.tensor(0.01, device=dev)
    plan = make_plan(n, steps, _batch(ipc), STRATEGY, torch.Generator().manual_seed(0), dev)
    return net, start, target, X, y, lr, plan


TIME_STEPS = int(os.environ.get("MTT_FAST_BENCH_TIME_STEPS", "10"))
TIME_IPC = int(os.environ.get("MTT_FAST_BENCH_TIME_IPC", "10"))
_TIMES: dict = {}


@pytest.mark.parametrize("variant", ["unroll", "checkpoint", "auto"])
def test_time_per_iteration(benchmark, variant):
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("MTT_FAST_BENCH_DEVICE=cuda but no GPU is visible")
    from mtt_fast.matching import match

    net, start, target, X, y, lr, plan = _setup_time(TIME_IPC, TIME_STEPS)
    mode = "unroll" if variant == "unroll" else "checkpoint"
    seg = "auto" if variant == "auto" else 1
    budget = 1 << 40  # "a generous budget"

    def one():
        r = match(net, start, target, X, y, lr, TIME_STEPS, plan=plan, mode=mode, segment=seg,
                  memory_budget=budget)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return r

    ref = match(net, start, target, X, y, lr, TIME_STEPS, plan=plan, mode="unroll")
    r = one()  # correctness before timing (also the warm-up)
    rel = float((r.grad_images - ref.grad_images).norm() / ref.grad_images.norm())
    # float32 with DSA: each mode carries its own roundoff of ~1e-3 relative to a float64
    # run (the tests check 1e-10 in float64 and 1e-4 on small float32 problems)
    assert rel <= 2e-2, rel
    benchmark.extra_info["rel_err_vs_unroll"] = rel
    benchmark.group = f"time ipc{TIME_IPC} steps{TIME_STEPS}"
    t = time.perf_counter()
    benchmark.pedantic(one, rounds=3, iterations=1)
    _TIMES[variant] = benchmark.stats.stats.median
    benchmark.extra_info.update(dict(variant=variant, segment=r.segment, device=DEVICE,
                                     ipc=TIME_IPC, steps=TIME_STEPS,
                                     wall=time.perf_counter() - t))
    if variant != "unroll" and "unroll" in _TIMES:
        ratio = _TIMES[variant] / _TIMES["unroll"]
        benchmark.extra_info["ratio_vs_unroll"] = ratio
        print(f"\n[time] {variant} / unroll = {ratio:.3f}")


def test_time_ratios_interleaved(benchmark):
    """The three variants timed round-robin in one process, in rotating order (min over
    rounds), so that drift in the machine's load hits them alike; asserts the targets: checkpoint <= 1.2x
    unroll, segment="auto" with a generous budget <= 1.05x unroll."""
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("MTT_FAST_BENCH_DEVICE=cuda but no GPU is visible")
    from mtt_fast.matching import match

    net, start, target, X, y, lr, plan = _setup_time(TIME_IPC, TIME_STEPS)
    variants = {"unroll": ("unroll", 1), "checkpoint": ("checkpoint", 1),
                "auto": ("checkpoint", "auto")}
    rounds = int(os.environ.get("MTT_FAST_BENCH_ROUNDS", "5"))

    def run_all():
        best = {k: float("inf") for k in variants}
        names = list(variants)
        for r in range(rounds):
            # rotate the order: what ran just before (and the allocator state it leaves,
            # e.g. 3 GB of freed unroll graph) must not favour one variant
            for k in names[r % len(names):] + names[: r % len(names)]:
                mode, seg = variants[k]
                t = time.perf_counter()
                match(net, start, target, X, y, lr, TIME_STEPS, plan=plan, mode=mode,
                      segment=seg, memory_budget=1 << 40)
                if DEVICE == "cuda":
                    torch.cuda.synchronize()
                best[k] = min(best[k], time.perf_counter() - t)
        return best

    for mode, seg in variants.values():  # warm-up (and the auto probe, cached)
        match(net, start, target, X, y, lr, TIME_STEPS, plan=plan, mode=mode, segment=seg,
              memory_budget=1 << 40)
    best = benchmark.pedantic(run_all, rounds=1, iterations=1)
    ratios = {k: best[k] / best["unroll"] for k in variants}
    benchmark.group = f"time ratios ipc{TIME_IPC} steps{TIME_STEPS}"
    benchmark.extra_info.update({f"min_s_{k}": v for k, v in best.items()})
    benchmark.extra_info.update({f"ratio_{k}": v for k, v in ratios.items()})
    print(f"\n[time] interleaved min over {rounds} rounds: " + ", ".join(
        f"{k} {best[k]:.2f}s ({ratios[k]:.3f}x unroll)" for k in variants))
    assert ratios["checkpoint"] <= 1.2, ratios
    assert ratios["auto"] <= 1.05, ratios


# ---- the paper's presets on a GPU -------------------------------------------------------

PRESETS = {
    # name: (classes, ipc, syn_steps, batch_syn)
    "cifar10-ipc10": (10, 10, 30, None),
    "cifar100-ipc50": (100, 50, 80, 125),
}


_PRESET: dict = {}


@pytest.mark.parametrize("mode", ["unroll", "checkpoint"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_on_gpu(benchmark, preset, mode):
    """Peak memory and time per iteration of the CIFAR presets (CUDA only)."""
    if DEVICE != "cuda" or not torch.cuda.is_available():
        pytest.skip("preset benchmark runs on a GPU: MTT_FAST_BENCH_DEVICE=cuda")
    from mtt_fast.matching import make_plan, match
    from mtt_fast.models import flatten, get_model

    K, ipc, steps, batch = PRESETS[preset]
    torch.manual_seed(0)
    dev = torch.device("cuda")
    net = get_model("ConvNet", 3, K, (32, 32)).to(dev)
    start = flatten(net).to(dev)
    target = start + 0.01 * torch.randn_like(start)
    n = K * ipc
    X = torch.randn(n, 3, 32, 32, device=dev)
    y = (torch.arange(n) % K).to(dev)
    lr = torch.tensor(0.01, device=dev)
    plan = make_plan(n, steps, batch, STRATEGY, torch.Generator().manual_seed(0), dev)

    def one():
        r = match(net, start, target, X, y, lr, steps, plan=plan, mode=mode, segment=1)
        torch.cuda.synchronize()
        return r

    torch.cuda.empty_cache()
    try:
        r = one()  # warm-up
    except torch.cuda.OutOfMemoryError as e:
        pytest.skip(f"{preset} {mode} does not fit this GPU: {str(e).splitlines()[0]}")
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    r = one()
    peak = torch.cuda.max_memory_allocated() - base
    benchmark.group = f"gpu preset {preset}"
    benchmark.pedantic(one, rounds=3, iterations=1)
    median = benchmark.stats.stats.median
    _PRESET[(preset, mode)] = (median, peak)
    info = dict(preset=preset, mode=mode, steps=steps, n=n, batch_syn=batch, peak_bytes=peak,
                stored_bytes=r.stored_bytes, gpu=torch.cuda.get_device_name())
    other = _PRESET.get((preset, "unroll" if mode == "checkpoint" else "checkpoint"))
    if other is not None:  # checkpoint over unroll, whichever ran second
        t_c, m_c = (median, peak) if mode == "checkpoint" else other
        t_u, m_u = other if mode == "checkpoint" else (median, peak)
        info.update(time_ratio_checkpoint_vs_unroll=t_c / t_u,
                    peak_ratio_checkpoint_vs_unroll=m_c / max(m_u, 1))
        print(f"\n[gpu] {preset}: checkpoint / unroll time {t_c / t_u:.3f}, "
              f"peak memory {m_c / max(m_u, 1):.3f}")
    benchmark.extra_info.update(info)
    print(f"\n[gpu] {preset} {mode}: peak {peak / 2**30:.2f} GiB, stored "
          f"{r.stored_bytes / 2**20:.1f} MiB, median {median:.3f} s")
