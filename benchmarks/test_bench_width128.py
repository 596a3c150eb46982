"""Issue 8, "speed for this": expert training and one matching iteration at the paper's width
(ConvNet width 128, depth 3, MNIST's 1x28x28), the original code path against ours, timed
interleaved in one process at the same thread count.

* ``original``: the plain modules (``nn.Conv2d``, ``nn.GroupNorm``, ``nn.ReLU``,
  ``nn.AvgPool2d``) and the reference DSA (``MTT_FAST_BACKEND=torch``);
* ``ours``: the defaults (the fused ConvNet block, the compiled DSA ops).

Workloads: ``expert``: SGD steps on real-sized batches (256 images, DSA on every batch, as
buffer.py); ``matching``: one IPC 1 iteration of 20 student steps (checkpoint mode) as
``benchmarks/fidelity/mnist.sh`` runs it.

    pytest benchmarks/test_bench_width128.py --benchmark-only -s

``test_width128_keep_freed_memory`` times ours with and without
:func:`mtt_fast.utils.keep_freed_memory` (what ``mtt-fast`` applies; process-wide, so each
round is a fresh process, the two kinds alternating).

Knobs: ``MTT_FAST_BENCH_THREADS`` (default 1), ``MTT_FAST_BENCH_ROUNDS`` (default 3),
``MTT_FAST_BENCH_BATCHES`` (expert steps per round, default 8). Writes
``benchmarks/results/width128-cpu.json`` (medians, ratios, command, CPU, versions).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtt_fast import matching, models, training

THREADS = int(os.environ.get("MTT_FAST_BENCH_THREADS", "1"))
ROUNDS = int(os.environ.get("MTT_FAST_BENCH_ROUNDS", "3"))
BATCHES = int(os.environ.get("MTT_FAST_BENCH_BATCHES", "8"))
STRATEGY = "color_crop_cutout_flip_scale_rotate"
RESULT = Path(__file__).resolve().parent / "results" / "width128-cpu.json"
VARIANTS = {"original": dict(fused=False, backend="torch"), "ours": dict(fused=True, backend=None)}
_OUT: dict = {}


def _net(fused: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    net = models.get_model("ConvNet", 1, 10, (28, 28), width=128, depth=3)
    net.fused = fused
    return net


class _Backend:
    def __init__(self, name: str | None) -> None:
        self.name, self.old = name, None

    def __enter__(self):
        self.old = os.environ.pop("MTT_FAST_BACKEND", None)
        if self.name:
            os.environ["MTT_FAST_BACKEND"] = self.name

    def __exit__(self, *exc):
        os.environ.pop("MTT_FAST_BACKEND", None)
        if self.old is not None:
            os.environ["MTT_FAST_BACKEND"] = self.old


def _expert_work(fused: bool, backend: str | None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256 * BATCHES, 1, 28, 28, generator=g)
    y = torch.randint(10, (x.shape[0],), generator=g)
    net = _net(fused)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def run():
        with _Backend(backend):
            training.train_epoch(net, x, y, opt, 256, STRATEGY, torch.Generator().manual_seed(1))

    return run


def _matching_work(fused: bool, backend: str | None):
    g = torch.Generator().manual_seed(0)
    net = _net(fused)
    flat = models.functional.flatten(net).detach()
    start, target = flat, flat + 0.01 * torch.randn(flat.shape, generator=g)
    images = torch.randn(10, 1, 28, 28, generator=g, requires_grad=True)
    labels = torch.arange(10)
    lr = torch.tensor(0.01, requires_grad=True)

    def run():
        with _Backend(backend):
            matching.match(net, start, target, images, labels, lr, 20, augment=STRATEGY,
                           generator=torch.Generator().manual_seed(2), mode="checkpoint")  # fmt: skip

    return run


def _interleaved(make) -> dict:
    works = {k: make(**v) for k, v in VARIANTS.items()}
    times: dict[str, list[float]] = {k: [] for k in works}
    for w in works.values():
        w()  # warm-up (first-use costs)
    for _ in range(ROUNDS):
        for k, w in works.items():
            t = time.perf_counter()
            w()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_s": med, "all_s": times, "speedup": med["original"] / med["ours"]}


@pytest.mark.parametrize("workload", ["expert", "matching"])
def test_width128_original_vs_ours(benchmark, workload):
    torch.set_num_threads(THREADS)
    make = _expert_work if workload == "expert" else _matching_work
    res: dict = {}
    benchmark.pedantic(lambda: res.update(_interleaved(make)), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    _OUT[workload] = {**res, "unit": f"{BATCHES} batches of 256" if workload == "expert"
                      else "one IPC 1 iteration, 20 student steps"}  # fmt: skip
    _save()
    print(f"\n{workload}: original {res['median_s']['original']:.2f} s, ours "
          f"{res['median_s']['ours']:.2f} s ({res['speedup']:.2f}x)")  # fmt: skip


def _save() -> None:
    from _results import write_sections

    write_sections(RESULT, {"command": "pytest benchmarks/test_bench_width128.py --benchmark-only -s",
                            "threads": THREADS, "rounds": ROUNDS,
                            "load_avg_start": os.getloadavg()}, _OUT)  # fmt: skip


def test_width128_keep_freed_memory(benchmark):
    times: dict[str, dict[str, list[float]]] = {"expert": {"off": [], "on": []},
                                                "matching": {"off": [], "on": []}}  # fmt: skip

    def rounds():
        for _ in range(ROUNDS):
            for kind, flag in (("off", "0"), ("on", "1")):
                r = subprocess.run([sys.executable, __file__, flag], capture_output=True,
                                   text=True, check=True, env={**os.environ, "PYTHONPATH": str(
                                       Path(__file__).resolve().parents[1])})  # fmt: skip
                got = json.loads(r.stdout.strip().splitlines()[-1])
                for w in times:
                    times[w][kind].append(got[w])

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    res = {}
    for w, t in times.items():
        med = {k: statistics.median(v) for k, v in t.items()}
        res[w] = {"median_s": med, "all_s": t, "speedup": med["off"] / med["on"]}
        print(f"\n{w}, ours, keep_freed_memory off {med['off']:.2f} s, on {med['on']:.2f} s "
              f"({res[w]['speedup']:.2f}x)")  # fmt: skip
    _OUT["keep_freed_memory"] = res
    _save()


if __name__ == "__main__":  # one round of test_width128_keep_freed_memory, in its own process
    torch.set_num_threads(THREADS)
    if sys.argv[1] == "1":
        from mtt_fast.utils import keep_freed_memory

        assert keep_freed_memory()
    out = {}
    for name, make in (("expert", _expert_work), ("matching", _matching_work)):
        work = make(fused=True, backend=None)
        work()  # warm-up
        t = time.perf_counter()
        work()
        out[name] = time.perf_counter() - t
    print(json.dumps(out))
