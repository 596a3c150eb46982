"""train_experts on a tiny problem: snapshots, log, resume, refusal of other settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mtt_fast
from mtt_fast.data import Prepared, prepare
from mtt_fast.experts import train_experts
from mtt_fast.models import flatten, get_model
from mtt_fast.store import TrajectoryStore

KW = {"width": 8, "depth": 2}


@pytest.fixture(scope="module")
def tiny() -> Prepared:
    d = prepare("digits")
    return Prepared(
        name=d.name,
        train_images=d.train_images[:300],
        train_labels=d.train_labels[:300],
        test_images=d.test_images[:100],
        test_labels=d.test_labels[:100],
        classes=d.classes,
        mean=d.mean,
        std=d.std,
    )


def _run(out, tiny, n, **kw):
    args = dict(num_experts=n, epochs=2, lr=0.05, batch_size=64, out=out, data=tiny,
                progress=False, model_kwargs=KW, seed=3)  # fmt: skip
    args.update(kw)
    return train_experts(**args)


def test_train_and_resume(tmp_path, tiny):
    out = tmp_path / "buf"
    seen = []

    def stop_in_expert_1(rec):
        seen.append(rec)
        if rec["expert"] == 1:
            raise KeyboardInterrupt  # killed in the middle of expert 1

    with pytest.raises(KeyboardInterrupt):
        _run(out, tiny, 2, log=stop_in_expert_1)
    store = TrajectoryStore.open(out)
    assert store.num_experts == 1  # only whole experts
    assert [r["epoch"] for r in seen] == [1, 2, 1]

    store = _run(out, tiny, 2, progress=True)  # resumes with expert 1
    assert store.num_experts == 2 and store.epochs == 2
    meta = store.meta
    assert meta["model"] == "ConvNet" and meta["dataset"] == "digits" and meta["zca"] is False
    assert meta["model_spec"]["width"] == 8 and meta["lr"] == 0.05 and meta["seed"] == 3
    assert meta["im_size"] == [8, 8] and meta["channels"] == 1 and meta["num_classes"] == 10

    lines = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["expert"], r["epoch"]) for r in lines[-2:]] == [(1, 1), (1, 2)]
    assert all(0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1 for r in lines)

    # expert i starts from the model initialised with seed + i, and it moves every epoch
    torch.manual_seed(3 + 1)
    init = flatten(get_model("ConvNet", 1, 10, (8, 8), **KW))
    torch.testing.assert_close(store.params(1, 0), init)
    traj = store.expert(1)
    assert isinstance(traj, np.memmap)
    assert np.abs(np.diff(traj, axis=0)).sum(1).min() > 0
    store.check_model(get_model("ConvNet", 1, 10, (8, 8), **KW))

    # the top-level names resolve through experts.py / store.py
    assert mtt_fast.train_experts is train_experts
    assert mtt_fast.TrajectoryStore is TrajectoryStore
    assert mtt_fast.import_buffers is mtt_fast.store.import_buffers

    before = store.expert(0).copy()
    store = _run(out, tiny, 2)  # nothing to do
    assert store.num_experts == 2
    np.testing.assert_array_equal(store.expert(0), before)

    with pytest.raises(ValueError, match=r"lr: store has 0.05, asked 0.1"):
        _run(out, tiny, 3, lr=0.1)
    with pytest.raises(ValueError, match=r"width"):
        _run(out, tiny, 3, model_kwargs={"width": 4, "depth": 2})
