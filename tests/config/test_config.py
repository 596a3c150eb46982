"""The one configuration: sections, flat names, presets, explicit settings against a store."""

from __future__ import annotations

import json

import pytest
import torch

import mtt_fast
from mtt_fast.cli import build_parser, main
from mtt_fast.config import Config, DistillConfig, DistillSettings, preset
from mtt_fast.experts import train_experts


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_sections_and_flat_names():
    c = preset("cifar10", 10)
    assert DistillConfig is Config
    assert isinstance(c.distill, DistillSettings) and c.syn_steps == c.distill.syn_steps == 30
    assert c.num_experts == c.experts.num_experts and c.num_eval == c.eval.num_eval
    d = c.replace(syn_steps=3, num_experts=2, eval_models="MLP,ConvNet")
    assert (d.distill.syn_steps, d.experts.num_experts, d.eval.eval_models) == (3, 2, ("MLP", "ConvNet"))
    assert c.syn_steps == 30  # frozen: replace made a copy
    assert Config.from_dict(d.to_dict()) == d
    assert set(d.sections()) == {"run", "experts", "distill", "eval"}
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['sin_steps'\]"):
        c.replace(sin_steps=3)
    with pytest.raises(ValueError, match="syn_steps must be an int >= 1, got 0"):
        c.replace(syn_steps=0)
    with pytest.raises(ValueError, match="unknown model"):
        c.replace(eval_models=("NoSuchNet",))
    with pytest.raises(AttributeError):
        c.no_such_setting  # noqa: B018


def test_each_subcommand_shows_only_its_settings():
    sub = build_parser()._subparsers._group_actions[0].choices
    buffer, distill = sub["buffer"].format_help(), sub["distill"].format_help()
    assert "--expert-epochs-train" in buffer and "--syn-steps" not in buffer and "--lr-img" not in buffer
    assert "--syn-steps" in distill and "--num-experts" not in distill
    assert "--num-experts" in sub["run"].format_help() and "--syn-steps" in sub["run"].format_help()


@pytest.fixture(scope="module")
def narrow_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("w4")
    train_experts(num_experts=1, epochs=2, batch_size=512, out=out, progress=False,
                  model_kwargs={"width": 4, "depth": 2})  # fmt: skip
    return out


DIST = ["--iterations", "1", "--syn-steps", "2", "--expert-epochs", "1", "--max-start-epoch",
        "1", "--num-eval", "0", "--no-progress"]  # fmt: skip


def test_explicit_setting_never_loses_to_the_store(tmp_path, narrow_store, capsys):
    args = ["distill", "--store", str(narrow_store), *DIST]
    # width 8 asked, the experts have width 4: stop, naming both
    assert main([*args, "--width", "8", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "{'width': 8}" in err and "{'width': 4}" in err and "Traceback" not in err
    assert main([*args, "--zca", "--out", str(tmp_path / "b")]) == 2
    assert "zca=True was asked" in capsys.readouterr().err
    # nothing asked: the store's architecture is used
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    syn = mtt_fast.synthetic.SyntheticSet.load(tmp_path / "c" / "synthetic.pt")
    assert syn.model_kwargs == {"width": 4, "depth": 2}


def test_run_as_a_library_call(tmp_path):
    out = tmp_path / "r"
    rep = mtt_fast.run(
        dataset="digits", ipc=1, out=out, progress=False, log=None, iterations=2, syn_steps=2,
        expert_epochs=1, max_start_epoch=1, num_experts=1, buffer_epochs=1, buffer_batch=512,
        num_eval=1, epoch_eval_train=1, eval_it=1, model_kwargs={"width": 4, "depth": 2},
        baselines=("random",),
    )  # fmt: skip
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(rep))
    assert rep["config"]["syn_steps"] == 2 and rep["num_experts"] == 1
    assert set(rep["accuracy"]) == {"mtt", "random"}
    with pytest.raises(ValueError, match="unknown setting"):
        mtt_fast.run(dataset="digits", out=tmp_path / "x", syn_stepz=2)
