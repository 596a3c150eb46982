"""Scale-out with torchrun (issue 11): 2 gloo processes on the CPU.

* ``buffer`` under torchrun fills one store with the experts one process makes, bit for bit;
* ``distill --trajectories 2`` under torchrun equals the one-process K=2 run (up to the
  order of the gradient sums) and differs from K=1;
* a killed rank's run resumes (``--resume``) to the uninterrupted result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mtt_fast.distillation.step import plan_seed
from mtt_fast.experts import TrajectoryStore
from mtt_fast.synthetic import load_synthetic

REPO = Path(__file__).resolve().parents[2]
STORE_ARGS = ["--dataset", "digits", "--width", "4", "--depth", "1", "--expert-epochs-train", "3",
              "--no-progress"]  # fmt: skip
DIST_ARGS = ["--ipc", "1", "--syn-steps", "4", "--expert-epochs", "1", "--max-start-epoch", "2",
             "--num-eval", "0", "--no-progress"]  # fmt: skip


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cli(args: list[str], nproc: int = 1) -> list[str]:
    cli = [sys.executable, "-m", "mtt_fast.cli", "--threads", "1", *args]
    if nproc == 1:
        return cli
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), "--no-python", *cli]  # fmt: skip


def _ok(cmd: list[str]) -> None:
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "store"
    _ok(_cli(["buffer", *STORE_ARGS, "--num-experts", "3", "--out", str(path)]))
    return path


def test_buffer_under_torchrun_makes_the_one_process_store(store, tmp_path):
    out = tmp_path / "s2"
    _ok(_cli(["buffer", *STORE_ARGS, "--num-experts", "3", "--out", str(out)], nproc=2))
    a, b = TrajectoryStore.open(store), TrajectoryStore.open(out)
    assert a.num_experts == b.num_experts == 3 and not list(out.glob("*.claim"))
    for i in range(3):
        np.testing.assert_array_equal(a.expert(i), b.expert(i))


def _images(path: Path) -> tuple[torch.Tensor, float]:
    s = load_synthetic(path / "synthetic.pt")
    return s["images"], float(s["lr"])


def test_two_trajectories_on_two_processes_equal_one_process(store, tmp_path):
    args = ["distill", "--store", str(store), *DIST_ARGS, "--iterations", "6"]
    _ok(_cli([*args, "--trajectories", "2", "--out", str(tmp_path / "k2w1")]))
    _ok(_cli([*args, "--trajectories", "2", "--out", str(tmp_path / "k2w2")], nproc=2))
    _ok(_cli([*args, "--trajectories", "1", "--out", str(tmp_path / "k1")]))
    (a, lr_a), (b, lr_b), (c, _) = (_images(tmp_path / d) for d in ("k2w1", "k2w2", "k1"))
    scale = float(a.abs().max())
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6 * scale)  # up to the order of sums
    assert lr_b == pytest.approx(lr_a, rel=1e-6)
    assert not torch.allclose(a, c)  # K=2 is not K=1
    # rank 0 alone wrote: one metrics stream, one header
    lines = (tmp_path / "k2w2" / "metrics.jsonl").read_text().splitlines()
    assert sum('"event": "start"' in ln for ln in lines) == 1


def test_plan_seeds_depend_only_on_seed_iteration_and_trajectory():
    seeds = {plan_seed(0, t, j) for t in range(50) for j in range(8)}
    assert len(seeds) == 400 and plan_seed(0, 3, 1) == plan_seed(0, 3, 1)
    assert plan_seed(1, 3, 1) != plan_seed(0, 3, 1)


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                kids.append(int(d.name))
    return kids


def test_a_killed_rank_resumes_to_the_uninterrupted_result(store, tmp_path):
    args = ["distill", "--store", str(store), *DIST_ARGS, "--iterations", "40",
            "--trajectories", "2", "--checkpoint-it", "1"]  # fmt: skip
    _ok(_cli([*args, "--out", str(tmp_path / "ref")]))
    out = tmp_path / "victim"
    run = subprocess.Popen(_cli([*args, "--out", str(out)], nproc=2), env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (out / "checkpoint.pt").exists() and run.poll() is None:
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        workers = _children(run.pid)
        assert run.poll() is None and workers, "the run ended before it could be killed"
        os.kill(max(workers), signal.SIGKILL)  # one rank dies: torchrun stops the other
        assert run.wait(timeout=120) != 0
    finally:
        run.kill()
    _ok(_cli([*args, "--out", str(out), "--resume"], nproc=2))
    (a, lr_a), (b, lr_b) = _images(tmp_path / "ref"), _images(out)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6 * float(a.abs().max()))
    assert lr_b == pytest.approx(lr_a, rel=1e-6)


def test_a_refusal_on_rank_0_stops_every_rank_with_its_message(store, tmp_path):
    out = tmp_path / "run"
    args = ["distill", "--store", str(store), *DIST_ARGS, "--iterations", "2", "--out", str(out)]
    _ok(_cli(args))
    r = subprocess.run(_cli(args, nproc=2), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0  # no hang: the other rank got rank 0's refusal
    assert r.stderr.count("already holds a distillation") == 2, r.stderr[-2000:]


def test_run_under_torchrun_trains_distills_and_reports_once(tmp_path):
    tiny = ["--iterations", "4", "--syn-steps", "3", "--expert-epochs", "1", "--max-start-epoch",
            "2", "--num-eval", "1", "--eval-epochs", "5", "--eval-it", "2", "--width", "8",
            "--num-experts", "2", "--expert-epochs-train", "2", "--trajectories", "2",
            "--baselines", "random", "--no-progress"]  # fmt: skip
    out1, out2 = tmp_path / "one", tmp_path / "two"
    _ok(_cli(["run", "--out", str(out1), *tiny]))
    r = subprocess.run(_cli(["run", "--out", str(out2), *tiny], nproc=2), env=_env(),
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("[2/3] distilling") == 1  # rank 0 speaks for all
    rep = json.loads((out2 / "report.json").read_text())
    assert set(rep["accuracy"]) == {"mtt", "random"}
    for i in range(2):
        np.testing.assert_array_equal(TrajectoryStore.open(out1 / "buffers").expert(i),
                                      TrajectoryStore.open(out2 / "buffers").expert(i))  # fmt: skip
    (a, _), (b, _) = _images(out1), _images(out2)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6 * float(a.abs().max()))
