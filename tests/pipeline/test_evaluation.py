"""Evaluation protocol, coresets and the shared training utilities on a tiny problem."""

from __future__ import annotations

import json

import pytest
import torch

import mtt_fast
from mtt_fast.evaluation import EvalReport, coreset, evaluate, evaluate_baselines
from mtt_fast.models import get_model
from mtt_fast.training import evaluate_accuracy, train_and_test

KW = {"width": 8, "depth": 2}


@pytest.fixture(scope="module")
def tiny(digits_subset):
    return digits_subset(400, 150)


def test_coreset_random_and_herding(tiny):
    for kind, model in [("random", None), ("herding", None), ("herding", "ConvNet")]:
        x, y, idx = coreset(tiny, 4, kind, seed=1, model=model, return_indices=True)
        assert x.shape == (40, 1, 8, 8) and y.dtype == torch.int64
        assert torch.equal(y, torch.arange(10).repeat_interleave(4))
        assert idx.unique().numel() == 40  # distinct images
        assert torch.equal(tiny.train_labels[idx], y) and torch.equal(tiny.train_images[idx], x)
    a = coreset(tiny, 4, "random", seed=1)[0]
    b = coreset(tiny, 4, "random", seed=2)[0]
    assert not torch.equal(a, b)
    # herding is deterministic and its first pick is the image closest to the class mean
    _, _, h = coreset(tiny, 1, "herding", return_indices=True)
    c0 = torch.nonzero(tiny.train_labels == 0).flatten()
    feats = tiny.train_images[c0].flatten(1)
    assert h[0] == c0[(feats - feats.mean(0)).pow(2).sum(1).argmin()]
    with pytest.raises(ValueError, match="only"):
        coreset(tiny, 1000)
    with pytest.raises(ValueError, match="kind"):
        coreset(tiny, 1, "kcenter")


def test_train_and_test_learns_hard_and_soft(tiny):
    x, y = tiny.train_images, tiny.train_labels
    torch.manual_seed(0)
    net = get_model("ConvNet", 1, 10, (8, 8), **KW)
    chance = evaluate_accuracy(net, tiny.test_images, tiny.test_labels)
    res = train_and_test(net, x, y, tiny.test_images, tiny.test_labels, torch.tensor(0.05),
                         epochs=4, batch_size=32, dsa_strategy=None,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert res["test_acc"] > max(0.4, chance + 0.2), (chance, res)
    soft = torch.nn.functional.one_hot(y[:64], 10).float() * 0.9 + 0.01
    torch.manual_seed(0)
    res = train_and_test(get_model("ConvNet", 1, 10, (8, 8), **KW), x[:64], soft,
                         tiny.test_images, tiny.test_labels, 0.05, epochs=2)  # fmt: skip
    assert 0 <= res["test_acc"] <= 1 and res["lr"] == pytest.approx(0.05)


def test_evaluate_report_and_file(tiny, tmp_path):
    x, y = coreset(tiny, 3, "random")
    rep = evaluate(x, y, 0.05, tiny, num_eval=2, epochs=3, model_kwargs=KW)
    assert isinstance(rep, EvalReport)
    r = rep.results["mtt"]["ConvNet"]
    assert len(r["runs"]) == 2 and 0 <= r["mean"] <= 1 and r["std"] >= 0
    assert r["mean"] == pytest.approx(sum(r["runs"]) / 2)
    d = rep.to_dict()
    json.dumps(d)
    assert d["config"]["ipc"] == 3 and d["config"]["epochs"] == 3
    assert "ConvNet" in str(rep)

    # the same runs from a file written like distillation does, through mtt_fast.evaluate
    f = tmp_path / "syn.pt"
    torch.save({"images": x, "labels": y, "lr": torch.tensor(0.05)}, f)
    rep2 = mtt_fast.evaluate(f, data=tiny, num_eval=2, epochs=3,
                             model_kwargs={"ConvNet": KW})  # fmt: skip
    assert rep2.results["mtt"]["ConvNet"]["runs"] == r["runs"]

    base = evaluate_baselines(tiny, 2, 0.05, num_eval=1, epochs=1, model_kwargs=KW)
    assert set(base) == {"random", "herding"} and len(base["herding"]["ConvNet"]["runs"]) == 1


def test_evaluate_rejects_bad_inputs(tiny):
    x, y = coreset(tiny, 1, "random")
    with pytest.raises(ValueError, match=r"\(3, 8, 8\).*\(1, 8, 8\)"):
        evaluate(x.expand(-1, 3, -1, -1), y, 0.01, tiny)
    with pytest.raises(ValueError, match="9 rows but there are 10 images"):
        evaluate(x, y[:9], 0.01, tiny)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        evaluate(x, y + 5, 0.01, tiny)
    with pytest.raises(ValueError, match="lr"):
        evaluate(x, y, float("nan"), tiny)
    with pytest.raises(ValueError, match="data"):
        evaluate(x, y, 0.01)
