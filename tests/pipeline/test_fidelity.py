"""Faithful to the original code: expert and baseline learning rates, lr schedules, the set's
own architecture and DSA at evaluation, published references, and `reproduce`."""

from __future__ import annotations

import json

import pytest
import torch

import mtt_fast
from mtt_fast import evaluation, training
from mtt_fast.cli import build_parser, config_from_args, main
from mtt_fast.config import EXPERT_LR, known_presets, preset
from mtt_fast.evaluation import protocol as _protocol  # noqa: F401  (monkeypatched)
from mtt_fast.evaluation.published import published
from mtt_fast.experts import train_experts


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(digits_subset):
    return digits_subset(200, 50)


# ------------------------------------------------------------------ 1. experts' lr


@pytest.mark.parametrize("dataset,ipc", [(d, i) for d, i in known_presets() if d != "digits"])
def test_experts_train_at_buffer_py_lr_whatever_the_ipc(dataset, ipc):
    assert preset(dataset, ipc).expert_lr == EXPERT_LR == 0.01
    # lr_teacher initialises the student's lr only
    assert preset(dataset, ipc, lr_teacher=0.5).expert_lr == 0.01
    assert preset(dataset, ipc, buffer_lr=0.03).expert_lr == 0.03


def test_cli_buffer_settings_do_not_depend_on_ipc_or_lr_teacher(capsys):
    p = build_parser()
    cfgs = [
        config_from_args(p.parse_args(["buffer", "--dataset", d, "--ipc", str(i)]), d)[0]
        for d, i in (("cifar10", 1), ("cifar10", 10), ("cifar10", 50), ("svhn", 10))
    ]
    assert {c.expert_lr for c in cfgs} == {0.01}
    assert {c.buffer_epochs for c in cfgs} == {50}
    # lr_teacher is the student's: `buffer` does not even take it
    assert main(["buffer", "--lr-teacher", "0.2"]) == 2
    assert "--lr-teacher" in capsys.readouterr().err
    a = p.parse_args(["buffer", "--dataset", "cifar10", "--ipc", "10", "--expert-lr", "0.02"])
    assert config_from_args(a, "cifar10")[0].expert_lr == 0.02


def test_buffer_honours_explicit_expert_epochs(tmp_path):
    out = tmp_path / "store"
    args = ["buffer", "--out", str(out), "--num-experts", "1", "--expert-epochs-train", "2",
            "--expert-batch", "256", "--width", "4", "--no-progress"]  # fmt: skip
    assert main(args) == 0  # the digits preset's max_start_epoch (6) does not stretch it
    store = mtt_fast.TrajectoryStore.open(out)
    assert store.epochs == 2 and store.meta["lr"] == 0.02  # digits' own expert lr (explicit)


def test_expert_lr_decay_at_buffer_py_epoch(tmp_path, tiny):
    recs: list[dict] = []
    train_experts(num_experts=1, epochs=5, lr=0.1, batch_size=100, data=tiny, lr_decay=True,
                  out=tmp_path / "s", progress=False, model_kwargs={"width": 4, "depth": 1},
                  log=recs.append)  # fmt: skip
    # buffer.py: lr_schedule = [train_epochs // 2 + 1] = [3]; decays after (0-based) epoch 3
    assert [r["lr"] for r in recs] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01])


# ------------------------------------------------------------------ evaluation protocol


def test_evaluation_runs_epochs_plus_one_passes_and_decays_like_evaluate_synset(monkeypatch):
    lrs: list[float] = []

    def fake_epoch(net, x, y, opt, *a, **k):
        lrs.append(opt.param_groups[0]["lr"])
        return 0.0, 0.0

    monkeypatch.setattr(training, "train_epoch", fake_epoch)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1])
    training.train_and_test(net, x, y, x, y, lr=1.0, epochs=6)
    # range(Epoch + 1) passes; lr x0.1 once pass Epoch // 2 + 1 = 4 is done
    assert lrs == pytest.approx([1.0] * 5 + [0.1] * 2)


# ------------------------------------------------------------------ 5. the set's own model


def _fake_training(monkeypatch):
    calls: list[dict] = []
    built: list[tuple] = []
    real_get = mtt_fast.models.get_model

    def get_model(name, *a, **kw):
        built.append((name, kw))
        return real_get(name, *a, **kw)

    def fake(net, *a, dsa_strategy=None, **k):
        calls.append({"dsa": dsa_strategy})
        return {"test_acc": 0.5, "train_acc": 0.5, "train_loss": 0.0, "lr": 0.1, "epochs": 1}

    monkeypatch.setattr(mtt_fast.models, "get_model", get_model)
    monkeypatch.setattr(evaluation.protocol, "train_and_test", fake)
    return calls, built


def _saved_set(path, tiny, dsa="none"):
    torch.save(
        {
            "images": tiny.train_images[:10].clone(),
            "labels": torch.arange(10),
            "lr": 0.01,
            "dataset": "digits",
            "zca": False,
            "model": "ConvNet",
            "model_kwargs": {"width": 8, "depth": 1},
            "config": {"dsa_strategy": dsa},
        },
        path,
    )
    return path


def test_evaluate_path_trains_the_stored_architecture_with_its_dsa(tmp_path, tiny, monkeypatch):
    calls, built = _fake_training(monkeypatch)
    path = _saved_set(tmp_path / "syn.pt", tiny, dsa="none")
    rep = mtt_fast.evaluate(path, data=tiny, num_eval=2, epochs=1)
    assert built == [("ConvNet", {"width": 8, "depth": 1})] * 2
    assert [c["dsa"] for c in calls] == [None, None]
    assert rep.config["models"] == ["ConvNet"]
    # the set's strategy when it has one; an explicit argument still wins
    _saved_set(path, tiny, dsa="flip")
    calls.clear()
    mtt_fast.evaluate(path, data=tiny, num_eval=1, epochs=1)
    mtt_fast.evaluate(path, data=tiny, num_eval=1, epochs=1, dsa_strategy="crop")
    assert [c["dsa"] for c in calls] == ["flip", "crop"]


def test_cli_eval_honours_the_sets_dsa(tmp_path, tiny, monkeypatch, capsys):
    calls, built = _fake_training(monkeypatch)
    path = _saved_set(tmp_path / "syn.pt", tiny, dsa="none")
    args = ["eval", str(path), "--num-eval", "1", "--eval-epochs", "1", "--no-progress"]
    assert main([*args, "--baselines", "random"]) == 0
    assert [c["dsa"] for c in calls] == [None, None]
    assert built[0] == ("ConvNet", {"width": 8, "depth": 1})


# ------------------------------------------------------------------ 2 + 6. reports


def test_published_references_are_labelled():
    ref = published("CIFAR-10", 10)
    assert ref["mtt"]["mean"] == pytest.approx(0.653) and ref["mtt"]["source"] == "paper"
    assert ref["random"]["mean"] == pytest.approx(0.26) and "full_data" in ref
    assert published("tiny", 50)["herding"]["std"] == pytest.approx(0.003)
    mn = published("mnist", 1)
    assert mn["mtt"]["mean"] == pytest.approx(0.914)
    assert mn["mtt"]["source"] == "rerun by later work" and "random" not in mn
    assert published("fashion-mnist", 10)["mtt"]["source"] == "rerun by later work"
    assert published("cifar10-subset", 1) == {} and published("digits", 1) == {}


TINY = [
    "--iterations", "4", "--syn-steps", "3", "--expert-epochs", "1", "--max-start-epoch", "2",
    "--num-eval", "1", "--eval-epochs", "3", "--eval-it", "2", "--width", "8", "--no-progress",
    "--num-experts", "1", "--expert-epochs-train", "2", "--expert-batch", "128",
]  # fmt: skip


def test_run_report_baseline_lr_paper_style_and_published(tmp_path, capsys):
    out = tmp_path / "run"
    # digits' lr_teacher is 0.02: baselines must still train at 0.01
    assert main(["run", "--out", str(out), "--baselines", "random,herding", *TINY]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["protocol"]["lr"]["random"] == rep["protocol"]["lr"]["herding"] == 0.01
    assert rep["protocol"]["lr"]["mtt"] == pytest.approx(rep["learned_lr"])
    ps = rep["accuracy_paper_style"]
    assert "paper" in ps["note"] and ps["iteration"] in (2, 4)
    assert rep["published"] == {} and rep["gap_to_published"] == {}
    printed = capsys.readouterr().out
    assert "published" in printed and "paper-style" in printed


@pytest.mark.parametrize("num_eval", [1, 0])
def test_run_reuses_the_loops_evaluation_of_the_final_set(tmp_path, monkeypatch, num_eval):
    """The loop evaluates the set at its last iteration; the report reuses that evaluation
    instead of training the same number of models on the same set again. With no periodic
    evaluation (num_eval 0) the report's single model is a fresh evaluation."""
    calls: list = []
    real = evaluation.evaluate

    def counting(*a, **k):
        rep = real(*a, **k)
        calls.append((k.get("seed"), rep.results["mtt"]))
        return rep

    monkeypatch.setattr(evaluation, "evaluate", counting)
    out = tmp_path / "run"
    args = ["run", "--out", str(out), *TINY, "--num-eval", str(num_eval)]
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    head = rep["model"]
    if num_eval:
        assert len(calls) == 2  # iterations 2 and 4: none after the loop
        assert calls[-1][0] == rep["config"]["seed"] * 1_000_003 + 4
        assert rep["accuracy"]["mtt"]["runs"] == calls[-1][1][head]["runs"]
        assert "last iteration" in rep["protocol"]["mtt_models"]
    else:
        assert len(calls) == 1 and calls[0][0] == rep["config"]["seed"]
        assert rep["accuracy"]["mtt"]["runs"] == calls[0][1][head]["runs"]
        assert "fresh" in rep["protocol"]["mtt_models"]


def test_reproduce_shares_experts_and_resumes_cell_by_cell(tmp_path, monkeypatch):
    from mtt_fast import experts, pipeline

    trained: list[int] = []
    real = experts.train_experts

    def counting(*a, **k):
        store = real(*a, **k)
        trained.append(store.num_experts)
        return store

    monkeypatch.setattr(experts, "train_experts", counting)
    out = tmp_path / "rep"
    args = ["reproduce", "--dataset", "digits", "--ipc", "2,1", "--out", str(out), *TINY]
    assert main(args) == 0
    table = json.loads((out / "table.json").read_text())
    assert [(r["ipc"], r["dataset"]) for r in table["rows"]] == [(1, "digits"), (2, "digits")]
    assert len({r["store"] for r in table["rows"]}) == 1 and trained == [1]
    md = (out / "table.md").read_text()
    assert md.count("| digits |") == 2 and "published MTT" in md
    assert table["versions"]["torch"] == torch.__version__ and table["command"]

    # a finished cell is kept, an unfinished one runs: remove cell 2's report
    (out / "digits" / "ipc2" / "report.json").unlink()
    ran: list[int] = []
    real_run = pipeline.run

    def spy(*a, **k):
        ran.append(k["config"].ipc)
        return real_run(*a, **k)

    monkeypatch.setattr(pipeline, "run", spy)
    assert main(args) == 0
    assert ran == [2]
    assert len(json.loads((out / "table.json").read_text())["rows"]) == 2


def test_reproduce_refuses_too_short_explicit_experts(tmp_path, capsys):
    args = ["reproduce", "--dataset", "digits", "--ipc", "1", "--out", str(tmp_path),
            "--max-start-epoch", "5", "--expert-epochs", "2", "--expert-epochs-train", "3"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "buffer_epochs=3" in err and "at least 6" in err and "Traceback" not in err
