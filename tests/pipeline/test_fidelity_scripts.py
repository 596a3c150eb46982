"""benchmarks/fidelity/baselines.py (a baseline model by model, resumable) and table.py's
filling of the rows made without baselines: the same numbers as the pipeline's baselines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mtt_fast.config import preset
from mtt_fast.data import prepare
from mtt_fast.evaluation import evaluate_baselines

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "fidelity"
ARGS = ["--dataset", "digits", "--ipc", "1", "--width", "8", "--depth", "1", "--epochs", "3"]


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import baselines
    import table

    n = torch.get_num_threads()
    yield baselines, table
    torch.set_num_threads(n)


def _row(protocol_epochs: int, kinds: dict) -> dict:
    """A report.json row of digits IPC 1 made without (some) baselines."""
    return {
        "dataset": "digits",
        "ipc": 1,
        "model": "ConvNet",
        "model_kwargs": {"width": 8, "depth": 1},
        "accuracy": {"mtt": {"mean": 0.5, "std": 0.0, "runs": [0.5, 0.5]}, **kinds},
        "per_model": {"ConvNet": {}},
        "protocol": {
            "num_eval": 2,
            "epochs": protocol_epochs,
            "dsa_strategy": preset("digits", 1).dsa,
            "batch_size": 256,
            "seed": 0,
            "lr": {"mtt": 0.02},
            "lr_source": {"mtt": "learned during distillation"},
        },
        "config": {"zca": False},
        "command": f"cmd {protocol_epochs} {sorted(kinds)}",
    }


def test_baselines_model_by_model_equal_the_pipelines_and_fill_the_table(scripts, tmp_path):
    baselines, table = scripts
    want = evaluate_baselines(
        prepare("digits"),
        1,
        kinds=("random",),
        num_eval=2,
        epochs=3,
        dsa_strategy=preset("digits", 1).dsa,
        model_kwargs={"ConvNet": {"width": 8, "depth": 1}},
    )["random"]["ConvNet"]["runs"]
    herding = {"herding": {"mean": 0.3, "std": 0.0, "runs": [0.3, 0.3]}}
    mine = {"random": {"mean": 0.1, "std": 0.0, "runs": [0.1, 0.1]}}
    rows = [_row(3, herding), _row(4, herding), _row(3, mine)]
    (tmp_path / "fidelity-mnist.json").write_text(json.dumps({"rows": rows}))

    # two sessions, one model each: the second resumes at model 1
    baselines.main([*ARGS, "--kind", "random", "--num-eval", "2", "--max-models", "1"], tmp_path)
    book = json.loads((tmp_path / "fidelity-baselines.json").read_text())
    assert list(book["entries"][0]["models"]) == ["0"]
    mid = json.loads((tmp_path / "fidelity-mnist.json").read_text())["rows"]
    assert all("random" not in r["accuracy"] for r in mid if "herding" in r["accuracy"])
    baselines.main([*ARGS, "--kind", "random", "--num-eval", "2"], tmp_path)
    (entry,) = json.loads((tmp_path / "fidelity-baselines.json").read_text())["entries"]
    got = [entry["models"][k]["test_acc"] for k in ("0", "1")]
    assert got == want  # same subset, same model seeds as evaluate_baselines
    assert entry["protocol"]["lr"] == 0.01 and entry["protocol"]["epochs"] == 3

    out = {r["command"]: r for r in json.loads((tmp_path / "fidelity-mnist.json").read_text())["rows"]}
    filled = out[rows[0]["command"]]
    assert filled["accuracy"]["random"]["runs"] == want
    assert filled["accuracy"]["random"]["mean"] == pytest.approx(sum(want) / 2)
    assert filled["per_model"]["ConvNet"]["random"] == filled["accuracy"]["random"]
    assert filled["protocol"]["lr"]["random"] == 0.01
    assert "baselines.py" in filled["protocol"]["lr_source"]["random"]
    assert filled["accuracy"]["herding"] == herding["herding"]  # what the row had is kept
    assert "random" not in out[rows[1]["command"]]["accuracy"]  # another protocol: 4 epochs
    assert out[rows[2]["command"]]["accuracy"]["random"] == mine["random"]  # never replaced
    md = (tmp_path / "fidelity-mnist.md").read_text()
    assert f"{100 * sum(want) / 2:.2f} +- " in md

    # nothing left to do: a third run trains nothing and changes nothing
    before = (tmp_path / "fidelity-baselines.json").read_text()
    baselines.main([*ARGS, "--kind", "random", "--num-eval", "2"], tmp_path)
    assert (tmp_path / "fidelity-baselines.json").read_text() == before


def test_table_fill_only_needs_no_cell(scripts, tmp_path, monkeypatch):
    _, table = scripts
    before = json.dumps({"rows": [_row(3, {})]})
    (tmp_path / "fidelity-mnist.json").write_text(before)
    monkeypatch.setattr(table, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["table.py", "--fill"])
    table.main()  # no baseline recorded: nothing to fill, nothing rewritten
    assert (tmp_path / "fidelity-mnist.json").read_text() == before
    assert not (tmp_path / "fidelity-mnist.md").exists()
    monkeypatch.setattr(sys, "argv", ["table.py", "OUT"])
    with pytest.raises(SystemExit, match="2"):
        table.main()  # a cell without --cell / --command
