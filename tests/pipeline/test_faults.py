"""Nothing lost, nothing silent: half-written files, permissions, refusals (fast)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from mtt_fast.distillation import distill
from mtt_fast.utils import atomic_save, pid_temp_path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_outputs_get_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_save({"a": 1}, tmp_path / "x.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["x.pt"]  # no temp file left


def test_a_killed_writers_temp_file_is_removed_when_the_folder_is_opened(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = out / f".checkpoint.pt.tmp-{_dead_pid()}-0123456789ab"
    dead.write_bytes(b"x" * 1000)
    live = pid_temp_path(out / "synthetic.pt")  # this process: a writer still alive
    live.write_bytes(b"y")
    with pytest.raises(ValueError, match="no experts|store"):
        distill(store=None, out=out)
    with pytest.raises(FileNotFoundError):
        distill(store=tmp_path / "no-store", out=out)
    # the check of the out folder runs once a store is open: use a real tiny one
    from mtt_fast.experts import train_experts

    st = train_experts(num_experts=1, epochs=1, batch_size=512, out=tmp_path / "s", progress=False,
                       model_kwargs={"width": 4, "depth": 1})  # fmt: skip
    distill(store=st, out=out, iterations=1, syn_steps=1, expert_epochs=1, max_start_epoch=1,
            num_eval=0, progress=False)  # fmt: skip
    assert not dead.exists() and live.exists()


def test_an_out_that_is_a_file_is_one_line(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    from mtt_fast.cli import main
    from mtt_fast.experts import train_experts

    train_experts(num_experts=1, epochs=1, batch_size=512, out=tmp_path / "s", progress=False,
                  model_kwargs={"width": 4, "depth": 1})  # fmt: skip
    assert main(["distill", "--store", str(tmp_path / "s"), "--out", str(f), "--iterations", "1",
                 "--max-start-epoch", "1", "--expert-epochs", "1", "--no-progress"]) == 2  # fmt: skip
