"""Scale-out throughput (issue 11): 1 vs 2 processes under torchrun, one thread each, and
several experts at once in one process. Run with 2 idle cores:

    pytest benchmarks/test_bench_scaling.py --benchmark-only -s

Workload: the CIFAR-10 slice (``../shared/data/cifar10-subset``, skipped without it) at the
paper's width (ConvNet width 128, depth 3, DSA), so a process's start-up (a few seconds)
is small next to its work:

* experts: 4 experts x 2 epochs (4,000 images), experts per hour of the whole command
  (both sides under torchrun, so both pay its start-up);
* distillation: ``--trajectories 2``, IPC 1, 20 student steps, 12 iterations; trajectories
  per second from the loop's own ``sec_per_it`` (start-up and the first 2 iterations left
  out);
* vectorised: 4 experts x 1 epoch, ``--experts-at-once 4`` vs 1, in one process.

Targets (the issue): >= 1.8x experts per hour and >= 1.7x trajectories per second with 2
processes. Writes ``benchmarks/results/scaling-cpu.json`` (command, CPU, versions, times).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULT = REPO / "benchmarks" / "results" / "scaling-cpu.json"
MODEL = ["--dataset", "cifar10-subset", "--data-path", str(DATA), "--width", "128", "--depth", "3",
         "--no-zca"]  # fmt: skip
RESULTS: dict = {}

pytestmark = pytest.mark.skipif(
    not (DATA / "cifar10-subset" / "cifar10_subset.npz").is_file(),
    reason=f"needs the CIFAR-10 slice at {DATA}/cifar10-subset",
)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cli(args: list[str], nproc: int | None = None) -> list[str]:
    """The command; under torchrun with ``nproc`` processes (1 included, so that both sides of
    a comparison pay torchrun's start-up), or plain without ``nproc``."""
    cli = [sys.executable, "-m", "mtt_fast.cli", "--threads", "1", *args, "--no-progress"]
    if nproc is None:
        return cli
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), "--no-python", *cli]  # fmt: skip


def _timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return time.perf_counter() - t


def _record(name: str, value: dict) -> None:
    from _results import write_sections

    RESULTS[name] = value
    write_sections(RESULT, {"command": "pytest benchmarks/test_bench_scaling.py --benchmark-only -s",
                            "threads_per_process": 1}, RESULTS)  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scaling")


def test_experts_per_hour_1_vs_2_processes(benchmark, work):
    args = ["buffer", *MODEL, "--num-experts", "4", "--expert-epochs-train", "2"]
    times = {}

    def both():
        for n in (1, 2):
            times[n] = _timed(_cli([*args, "--out", str(work / f"experts-{n}p")], nproc=n))

    benchmark.pedantic(both, rounds=1, iterations=1)
    per_hour = {n: 4 * 3600 / t for n, t in times.items()}
    ratio = per_hour[2] / per_hour[1]
    benchmark.extra_info.update(seconds=times, experts_per_hour=per_hour, speedup=ratio)
    _record("experts", {"seconds": times, "experts_per_hour": per_hour, "speedup_2_vs_1": ratio,
                        "efficiency": ratio / 2, "target": 1.8})  # fmt: skip
    print(f"\nexperts per hour: 1 process {per_hour[1]:.0f}, 2 processes {per_hour[2]:.0f} "
          f"({ratio:.2f}x)")  # fmt: skip


def _traj_per_s(out: Path, k: int) -> float:
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    its = [r["sec_per_it"] for r in recs if "sec_per_it" in r and r["iteration"] > 2]  # log_every 1
    return k * len(its) / sum(its)


def test_trajectories_per_second_1_vs_2_processes(benchmark, work):
    store = work / "experts-1p"
    if not (store / "expert_00001.npy").exists():  # run alone: a smaller store will do
        _timed(_cli(["buffer", *MODEL, "--num-experts", "2", "--expert-epochs-train", "2",
                     "--out", str(store)]))  # fmt: skip
    args = ["distill", "--store", str(store), "--data-path", str(DATA), "--ipc", "1", "--syn-steps", "20",
            "--expert-epochs", "1", "--max-start-epoch", "1", "--iterations", "12",
            "--trajectories", "2", "--num-eval", "0", "--log-every", "1"]  # fmt: skip
    rates, times = {}, {}

    def both():
        for n in (1, 2):
            out = work / f"distill-{n}p"
            times[n] = _timed(_cli([*args, "--out", str(out), "--overwrite"], nproc=n))
            rates[n] = _traj_per_s(out, 2)

    benchmark.pedantic(both, rounds=1, iterations=1)
    ratio = rates[2] / rates[1]
    benchmark.extra_info.update(trajectories_per_s=rates, speedup=ratio)
    _record("distill_k2", {"seconds": times, "trajectories_per_s": rates, "speedup_2_vs_1": ratio,
                           "efficiency": ratio / 2, "target": 1.7})  # fmt: skip
    print(f"\ntrajectories/s: 1 process {rates[1]:.3f}, 2 processes {rates[2]:.3f} ({ratio:.2f}x)")


def test_experts_at_once_in_one_process(benchmark, work):
    args = ["buffer", *MODEL, "--num-experts", "4", "--expert-epochs-train", "1"]
    times = {}

    def both():
        for k in (1, 4):
            times[k] = _timed(_cli([*args, "--experts-at-once", str(k), "--out",
                                    str(work / f"at-once-{k}")]))  # fmt: skip

    benchmark.pedantic(both, rounds=1, iterations=1)
    per_hour = {k: 4 * 3600 / t for k, t in times.items()}
    ratio = per_hour[4] / per_hour[1]
    benchmark.extra_info.update(seconds=times, experts_per_hour=per_hour, speedup=ratio)
    _record("experts_at_once", {"seconds": times, "experts_per_hour": per_hour,
                                "speedup_4_vs_1": ratio, "device": "cpu, 1 thread"})  # fmt: skip
    print(f"\nexperts per hour, 1 thread: 1 at once {per_hour[1]:.0f}, 4 at once "
          f"{per_hour[4]:.0f} ({ratio:.2f}x)")  # fmt: skip
