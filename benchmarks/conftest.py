"""Shared benchmark fixtures (pytest-benchmark).

* ``bench_device``: ``MTT_FAST_BENCH_DEVICE`` (default ``cpu``); skips when it is ``cuda``
  and no GPU is visible.
* ``timed``: ``timed(fn, device)`` wraps ``fn`` so the timed call ends with a device sync.
* ``speedups``: a session registry ``speedups.add(group, name, seconds)``; at the end of
  the session the ratio of every non-reference entry over the group's ``reference``
  entry, and their geometric mean, are printed and written to
  ``.benchmarks/speedups.json`` with the hardware and versions.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections import defaultdict
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    dev = torch.device(os.environ.get("MTT_FAST_BENCH_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("MTT_FAST_BENCH_DEVICE=cuda but no CUDA GPU is visible")
    return dev


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture(scope="session")
def timed():
    """``timed(fn, device)``: ``fn`` followed by a device synchronisation, for timing."""

    def wrap(fn, device: torch.device):
        def run():
            out = fn()
            sync(device)
            return out

        return run

    return wrap


class Speedups:
    def __init__(self) -> None:
        self.times: dict[str, dict[str, float]] = defaultdict(dict)
        self.peak: dict[str, dict[str, int]] = defaultdict(dict)

    def add(self, group: str, name: str, seconds: float, peak_bytes: int | None = None) -> None:
        self.times[group][name] = seconds
        if peak_bytes is not None:
            self.peak[group][name] = peak_bytes

    def ratios(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for group, t in self.times.items():
            if "reference" in t:
                for name, s in t.items():
                    if name != "reference" and s > 0:
                        out[name][group] = t["reference"] / s
        return out

    @staticmethod
    def geomean(values) -> float:
        values = list(values)
        return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


_SPEEDUPS = Speedups()


@pytest.fixture(scope="session")
def speedups() -> Speedups:
    return _SPEEDUPS


def _env() -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def pytest_terminal_summary(terminalreporter):
    ratios = _SPEEDUPS.ratios()
    if not ratios:
        return
    tr = terminalreporter
    tr.section("speedup over the reference (median time ratio)")
    report = {"env": _env(), "ratios": ratios, "geomean": {}, "peak_bytes": _SPEEDUPS.peak}
    for name, per_group in ratios.items():
        for group, r in sorted(per_group.items()):
            tr.write_line(f"{name:>8s}  {group:<40s} {r:7.2f}x")
        gm = Speedups.geomean(per_group.values())
        report["geomean"][name] = gm
        tr.write_line(f"{name:>8s}  geometric mean over {len(per_group)} cases: {gm:.2f}x")
    out = Path(".benchmarks")
    out.mkdir(exist_ok=True)
    (out / "speedups.json").write_text(json.dumps(report, indent=2))
