"""Issue 10, items 2 and 6: a store filled by several processes at once holds exactly the asked
distinct experts; a dead claimant's expert is taken over; every expert is verified on open;
files that are not what was expected are named without advice to load them unsafely."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mtt_fast.experts import TrajectoryStore, train_experts

REPO = Path(__file__).resolve().parents[2]
TINY = dict(epochs=1, batch_size=256, progress=False, model_kwargs={"width": 4, "depth": 1})
CLI_TINY = ["--width", "4", "--depth", "1", "--expert-epochs-train", "1", "--no-progress"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _experts(store: TrajectoryStore) -> list[np.ndarray]:
    return [np.array(store.expert(i)) for i in range(store.num_experts)]


def test_two_concurrent_buffer_runs_make_exactly_the_asked_distinct_experts(tmp_path):
    out = tmp_path / "s"
    args = ["--threads", "1", "buffer", "--num-experts", "4", *CLI_TINY]
    cmd = [sys.executable, "-m", "mtt_fast.cli", *args, "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, text=True) for _ in "ab"]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    store = TrajectoryStore.open(out)
    assert sorted(p.name for p in out.glob("expert_*.npy")) == [
        f"expert_{i:05d}.npy" for i in range(4)
    ]
    assert not list(out.glob("*.claim")) and not list(out.glob(".*tmp*"))
    got = _experts(store)
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(got[i], got[j]), (i, j)
    # expert i is expert i, whoever trained it: equal to an uninterrupted one-process run.
    # The solo run is a fresh process too: bitwise equality holds between processes started
    # alike, not with this one, whose earlier tests may have changed torch's CPU kernel choice.
    solo_cmd = [*cmd[:-1], str(tmp_path / "solo")]
    solo_run = subprocess.run(solo_cmd, env=_env(), stderr=subprocess.PIPE, text=True, timeout=300)
    assert solo_run.returncode == 0, solo_run.stderr
    solo = _experts(TrajectoryStore.open(tmp_path / "solo"))
    for a, b in zip(got, solo, strict=True):
        np.testing.assert_array_equal(a, b)


_HOLDER = """
import sys, time
from mtt_fast.experts import TrajectoryStore
claim = TrajectoryStore.open(sys.argv[1]).claim(0)
print("claimed" if claim else "busy", flush=True)
time.sleep(600)
"""


def test_a_dead_claimants_expert_is_taken_over(tmp_path):
    out = tmp_path / "s"
    train_experts(out=out, num_experts=0, **TINY)  # the empty store
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], env=_env(),
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "claimed"
        store = TrajectoryStore.open(out)
        assert store.claimed() == {0} and store.claim(0) is None
        # while the claimant lives, this process trains the other expert, then waits for it
        seen = []
        killer = threading.Timer(1.0, lambda: os.kill(holder.pid, signal.SIGKILL))
        killer.start()
        t = time.perf_counter()
        store = train_experts(out=out, num_experts=2, poll=0.05, log=seen.append, **TINY)
        killer.join()
        assert time.perf_counter() - t >= 0.9  # it did wait for the claimant
    finally:
        holder.kill()
        holder.wait()
    assert [r["expert"] for r in seen] == [1, 0]  # 1 first, then 0 taken over from the dead
    assert store.num_experts == 2 and not list(out.glob("*.claim"))
    solo = _experts(train_experts(out=tmp_path / "solo", num_experts=2, **TINY))
    for a, b in zip(_experts(store), solo, strict=True):
        np.testing.assert_array_equal(a, b)


def test_stale_claim_files_are_removed_and_claims_are_exclusive(tmp_path):
    store = TrajectoryStore.create(tmp_path, {"model": "Toy", "dataset": "toyset", "epochs": 1,
                                              "num_params": 3})  # fmt: skip
    (tmp_path / "expert_00000.claim").write_text("{}")  # left by a killed process: not locked
    assert store.claimed() == set() and not (tmp_path / "expert_00000.claim").exists()
    with store.claim(0) as c:
        assert c.index == 0 and store.claimed() == {0} and store.claim(0) is None
        job = store.next_to_train(2)
        assert job.index == 1
        job.release()
        store.add_expert(np.zeros((2, 3)), index=0)
    assert store.claim(0) is None  # published: nothing to claim
    with pytest.raises(FileExistsError):
        store.add_expert(np.ones((2, 3)), index=0)
    assert store.next_to_train(1) is None


def _truncate(p: Path, keep: int) -> None:
    p.write_bytes(p.read_bytes()[:keep])


def test_every_expert_is_verified_on_open_and_a_top_up_refuses_a_damaged_one(tmp_path):
    out = tmp_path / "s"
    train_experts(out=out, num_experts=2, **TINY)
    f = out / "expert_00001.npy"
    good = f.read_bytes()
    _truncate(f, len(good) - 40)
    with pytest.raises(ValueError, match=r"expert_00001.npy is not what was expected.*retrain"):
        TrajectoryStore.open(out)
    with pytest.raises(ValueError, match=r"expert_00001.npy"):
        train_experts(out=out, num_experts=3, **TINY)  # a top-up does not report success
    arr = np.load(out / "expert_00000.npy")
    arr[-1, 3] = np.nan
    np.save(f, arr)
    with pytest.raises(ValueError, match=r"expert_00001.npy: its last snapshot has non-finite"):
        TrajectoryStore.open(out)
    f.write_bytes(good)
    assert TrajectoryStore.open(out).num_experts == 2


UNSAFE = ("allow_pickle", "weights_only=False", "weights_only` set to `False", "unsafe",
          "pickle.load")  # fmt: skip


def _refusals(tmp_path: Path):
    from mtt_fast.data.datasets import load_dataset
    from mtt_fast.distillation.state import DistillState
    from mtt_fast.experts import import_buffers
    from mtt_fast.synthetic import load_synthetic

    store_dir = tmp_path / "store"
    train_experts(out=store_dir, num_experts=1, **TINY)
    yield "checkpoint.pt", lambda p: DistillState.read_checkpoint(p)
    yield "synthetic.pt", load_synthetic
    yield "replay_buffer_0.pt", lambda p: import_buffers(
        [p], tmp_path / "imp", "ConvNet", "digits", 1, 10, 8, model_kwargs={"width": 4}
    )
    yield "data.npz", lambda p: load_dataset("npz", root=p)

    def expert(p: Path):
        os.replace(p, store_dir / "expert_00001.npy")
        TrajectoryStore.open(store_dir)

    yield "expert.npy", expert


@pytest.mark.parametrize("content", ["random", "pickle"])
def test_files_that_are_not_what_was_expected_never_suggest_an_unsafe_load(tmp_path, content):
    rng = np.random.default_rng(0)
    for name, load in _refusals(tmp_path):
        p = tmp_path / name
        if content == "random":
            p.write_bytes(rng.bytes(4096))
        elif name.endswith(".npy") or name.endswith(".npz"):
            (np.save if name.endswith(".npy") else np.savez)(p, np.array([{"a": 1}], object))
        else:
            torch.save({"x": datetime.date(2026, 1, 1)}, p)  # not allowed by weights_only
        with pytest.raises(ValueError) as e:
            load(p)
        msg = str(e.value)
        assert name.split(".")[0] in msg or "expert_00001" in msg, msg
        assert "not what was expected" in msg and "\n" not in msg, msg
        assert not any(u in msg for u in UNSAFE), msg
