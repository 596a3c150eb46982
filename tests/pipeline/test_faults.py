"""Nothing lost, nothing silent: half-written files, permissions, refusals (fast)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

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


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--threads", "-3", "info"], "--threads must be >= 1"),
        (["buffer", "--device", "foo"], "is not a device"),
        (["buffer", "--device", "cuda"], "--device cuda:"),
        (["buffer", "--device", "meta"], "only cpu and cuda"),
    ],
)
def test_bad_threads_and_devices_are_one_line(args, msg, capsys):
    from mtt_fast.cli import main

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and err.count("\n") == 1


def test_unwritable_or_file_out_is_refused_before_work(tmp_path, capsys):
    from mtt_fast.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    assert main(["buffer", "--out", str(f / "sub")]) == 2
    assert f"{f} is a file" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        assert main(["buffer", "--out", str(ro / "store")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_eval_refuses_nan_sets_and_zero_models(tmp_path, capsys):
    from mtt_fast.cli import main
    from mtt_fast.synthetic import SyntheticSet

    p = tmp_path / "s.pt"
    SyntheticSet(torch.full((10, 1, 8, 8), float("nan")), torch.arange(10), 0.01, dataset="digits").save(p)
    assert main(["eval", str(p), "--num-eval", "1", "--eval-epochs", "1"]) == 2
    assert "not all finite" in capsys.readouterr().err
    assert main(["eval", str(p), "--num-eval", "0"]) == 2
    assert "--num-eval" in capsys.readouterr().err


def test_eval_does_not_replace_a_finished_report_unless_asked(tmp_path, capsys):
    from mtt_fast.cli import main
    from mtt_fast.synthetic import SyntheticSet

    p, rep = tmp_path / "s.pt", tmp_path / "report.json"
    g = torch.Generator().manual_seed(0)
    SyntheticSet(torch.randn(10, 1, 8, 8, generator=g), torch.arange(10), 0.01,
                 dataset="digits", model="MLP").save(p)  # fmt: skip
    rep.write_text('{"finished": true}')
    args = ["eval", str(p), "--num-eval", "1", "--eval-epochs", "1", "--out", str(rep)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds a report" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert rep.read_text() == '{"finished": true}'
    assert main([*args, "--overwrite", "--no-progress"]) == 0
    assert "results" in rep.read_text()
