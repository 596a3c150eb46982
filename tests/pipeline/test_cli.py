"""The ``mtt-fast`` command through ``cli.main([...])``."""

from __future__ import annotations

import json

import pytest
import torch

from mtt_fast import __version__
from mtt_fast.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # main() may lower it for digits


DIST = [
    "--iterations", "4", "--syn-steps", "3", "--expert-epochs", "1", "--max-start-epoch", "2",
    "--num-eval", "1", "--eval-epochs", "5", "--eval-it", "2", "--width", "8", "--no-progress",
]  # fmt: skip
TINY = [*DIST, "--num-experts", "1", "--expert-epochs-train", "2", "--expert-batch", "128"]


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert __version__ in out and torch.__version__ in out
    assert "dsa" in out and "zca" in out and "cpu" in out


def test_no_command_and_bad_option(capsys):
    assert main([]) == 2
    assert main(["distill", "--bogus"]) == 2


def test_distill_missing_store(tmp_path, capsys):
    code = main(["distill", "--store", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mtt-fast: error:") and "nowhere" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_dataset(tmp_path, capsys):
    assert main(["run", "--dataset", "imagenet-42", "--out", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err
    assert "imagenet-42" in err and "Traceback" not in err


def test_run_writes_report_then_distill_and_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--baselines", "random", *TINY]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["dataset"] == "digits" and rep["ipc"] == 1
    for src in ("mtt", "random"):
        assert 0 <= rep["accuracy"][src]["mean"] <= 1 and rep["accuracy"][src]["std"] >= 0
    assert set(rep["per_model"]["ConvNet"]) == {"mtt", "random"}
    assert "note" in rep["best_during_distillation"]
    assert {"experts_s", "distill_s", "eval_s", "total_s"} <= set(rep["timings"])
    assert (out / "synthetic.png").is_file() and (out / "synthetic.pt").is_file()

    # distill from the store the run trained, resuming its finished checkpoint
    d_args = ["distill", "--store", str(out / "buffers"), "--out", str(out), "--resume"]
    assert main([*d_args, *DIST, "--matching", "unroll"]) == 0
    # a store / run mismatch is a one-line error
    assert main(["distill", "--store", str(out / "buffers"), "--model", "MLP", "--out",
                 str(tmp_path / "x"), *DIST]) == 2  # fmt: skip
    assert "Traceback" not in capsys.readouterr().err

    rep_path = tmp_path / "eval.json"
    code = main(["eval", str(out / "synthetic.pt"), "--models", "ConvNet", "--num-eval", "1",
                 "--eval-epochs", "3", "--no-progress", "--out", str(rep_path)])  # fmt: skip
    assert code == 0
    assert "ConvNet" in json.loads(rep_path.read_text())["results"]["mtt"]
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
