"""train_experts on a tiny problem: snapshots, log, resume, refusal of other settings, and
the one training loop it shares with evaluation (training.fit)."""

from __future__ import annotations

import copy
import importlib
import json

import numpy as np
import pytest
import torch

import mtt_fast
from mtt_fast import training
from mtt_fast.experts import StoreMeta, TrajectoryStore, train_experts
from mtt_fast.models import flatten, get_model

KW = {"width": 8, "depth": 2}


@pytest.fixture(scope="module")
def tiny(digits_subset):
    return digits_subset(300, 100)


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
    assert isinstance(meta, StoreMeta) and meta.model_name == "ConvNet"
    assert meta.dataset == "digits" and meta.zca is False and meta.preprocessing.zca_eps is None
    assert meta.model["width"] == 8 and meta.training.lr == 0.05 and meta.training.seed == 3
    assert meta.training.dsa_strategy == mtt_fast.augment.DEFAULT_STRATEGY
    assert meta.im_size == (8, 8) and meta.channels == 1 and meta.num_classes == 10
    assert meta.preprocessing.mean == tuple(tiny.mean) and meta.classes == tuple(tiny.classes)
    assert meta["lr"] == 0.05 and meta["zca"] is False  # the flat keys of before still read

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

    # the top-level names resolve to the experts package (mtt_fast.store re-exports it)
    importlib.import_module("mtt_fast.store")  # the old import path, kept for user code

    assert mtt_fast.train_experts is train_experts
    assert mtt_fast.TrajectoryStore is TrajectoryStore is mtt_fast.store.TrajectoryStore
    assert mtt_fast.import_buffers is mtt_fast.experts.import_buffers
    assert mtt_fast.store.import_buffers is mtt_fast.experts.import_buffers

    before = store.expert(0).copy()
    store = _run(out, tiny, 2)  # nothing to do
    assert store.num_experts == 2
    np.testing.assert_array_equal(store.expert(0), before)

    with pytest.raises(ValueError, match=r"lr: store has 0.05, asked 0.1"):
        _run(out, tiny, 3, lr=0.1)
    with pytest.raises(ValueError, match=r"width"):
        _run(out, tiny, 3, model_kwargs={"width": 4, "depth": 2})
    with pytest.raises(ValueError, match=r"dsa_strategy: store has '[a-z_]+', asked 'none'"):
        _run(out, tiny, 3, dsa=False)


def _reference_expert(tiny, seed, epochs, lr, momentum, batch_size, decay):
    """The expert loop as written before it moved into training.fit (buffer.py's)."""
    torch.manual_seed(seed)
    net = get_model("ConvNet", 1, 10, (8, 8), **KW)
    gen = torch.Generator().manual_seed(seed)
    snaps = [flatten(net).clone()]
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    for e in range(epochs):
        training.train_epoch(net, tiny.train_images, tiny.train_labels, opt, batch_size,
                             mtt_fast.augment.DEFAULT_STRATEGY, gen)  # fmt: skip
        snaps.append(flatten(net).clone())
        if decay and e == epochs // 2 + 1:
            lr *= 0.1
            opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    return torch.stack(snaps)


@pytest.mark.parametrize("decay", [False, True])
def test_experts_are_bit_identical_to_the_loop_before_fit(tmp_path, tiny, decay):
    recs: list[dict] = []
    store = _run(tmp_path / "s", tiny, 1, epochs=5, lr=0.1, momentum=0.5, lr_decay=decay,
                 log=recs.append)  # fmt: skip
    want = _reference_expert(tiny, 3, 5, 0.1, 0.5, 64, decay)
    assert torch.equal(torch.from_numpy(np.array(store.expert(0))), want)
    assert [r["lr"] for r in recs] == pytest.approx([0.1] * 5 if not decay else [0.1] * 4 + [0.01])
    assert store.meta.training.lr_decay is decay and store.meta.training.momentum == 0.5


@pytest.mark.parametrize("saved_epoch", [2, 4])  # before / after the decay (pass 3)
def test_an_expert_killed_mid_training_resumes_from_its_last_epoch_bit_for_bit(
    tmp_path, tiny, saved_epoch, capsys
):
    kw = dict(epochs=5, lr=0.1, momentum=0.5, lr_decay=True)
    want = _run(tmp_path / "whole", tiny, 2, **kw)
    out = tmp_path / "killed"

    def killed_during(rec):  # dies in the epoch after `saved_epoch` of expert 1
        if rec["expert"] == 1 and rec["epoch"] == saved_epoch + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(out, tiny, 2, log=killed_during, **kw)
    part = out / "expert_00001.partial.pt"
    assert part.exists() and TrajectoryStore.open(out).num_experts == 1
    assert torch.load(part, weights_only=True)["epoch"] == saved_epoch

    recs: list[dict] = []
    got = _run(out, tiny, 2, log=recs.append, **kw)
    assert [r["epoch"] for r in recs] == list(range(saved_epoch + 1, 6))  # no epoch redone
    assert recs[-1]["lr"] == pytest.approx(0.01)
    for i in range(2):
        np.testing.assert_array_equal(got.expert(i), want.expert(i))
    assert not part.exists()

    # an unreadable state is named on stderr and the expert is trained from its start
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "bad", tiny, 1, log=lambda r: _stop(r) if r["epoch"] == 2 else None,
             **kw)  # fmt: skip
    (tmp_path / "bad" / "expert_00000.partial.pt").write_bytes(b"torn")
    recs.clear()
    got = _run(tmp_path / "bad", tiny, 1, log=recs.append, **kw)
    assert "ignoring" in capsys.readouterr().err and recs[0]["epoch"] == 1
    np.testing.assert_array_equal(got.expert(0), want.expert(0))


def test_fit_resumes_at_a_pass_with_the_lr_and_optimizer_state_it_had():
    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))

    x, y = torch.randn(8, 1, 2, 2), torch.tensor([0, 1] * 4)
    net, gen = make(), torch.Generator().manual_seed(1)
    states = {}

    def keep(st, opt):
        states[st.epoch] = ({k: v.clone() for k, v in net.state_dict().items()},
                            copy.deepcopy(opt.state_dict()), gen.get_state())  # fmt: skip

    seen: list[training.EpochStats] = []
    training.fit(net, x, y, training.sgd(net, momentum=0.9), 1.0, 6, batch_size=4,
                 generator=gen, decay_after=2, on_epoch=seen.append, on_state=keep)  # fmt: skip
    for start in (1, 3, 5):
        net2 = make()
        sd, opt_sd, g = states[start]
        net2.load_state_dict(sd)
        gen2 = torch.Generator()
        gen2.set_state(g)
        rest: list[training.EpochStats] = []
        training.fit(net2, x, y, training.sgd(net2, momentum=0.9), 1.0, 6, batch_size=4,
                     generator=gen2, decay_after=2, on_epoch=rest.append, start=start,
                     optimizer_state=opt_sd)  # fmt: skip
        assert rest == seen[start:]
        for a, b in zip(net2.parameters(), net.parameters(), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"start must be in \[0, passes=6\], got 7"):
        training.fit(net, x, y, training.sgd(net), 1.0, 6, start=7)


def test_fit_runs_passes_decays_once_and_reports():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.randn(8, 1, 2, 2), torch.tensor([0, 1] * 4)
    seen: list[training.EpochStats] = []
    last = training.fit(net, x, y, training.sgd(net, momentum=0.9), 1.0, 6, batch_size=4,
                        decay_after=training.decay_epoch(5), on_epoch=seen.append)  # fmt: skip
    assert [s.epoch for s in seen] == [1, 2, 3, 4, 5, 6] and last == seen[-1]
    assert [s.lr for s in seen] == pytest.approx([1.0] * 4 + [0.1] * 2)  # after pass 5 // 2 + 1
    assert all(0 <= s.acc <= 1 and s.loss >= 0 for s in seen)
    assert training.decay_epoch(50) == 26
    with pytest.raises(ValueError, match="passes must be >= 1, got 0"):
        training.fit(net, x, y, training.sgd(net), 1.0, 0)
    with pytest.raises(ValueError, match="lr must be a finite positive number, got nan"):
        training.fit(net, x, y, training.sgd(net), float("nan"), 1)
    with pytest.raises(KeyboardInterrupt):  # a callback stops the loop
        training.fit(net, x, y, training.sgd(net), 1.0, 3, on_epoch=_stop)


def _stop(stats):
    raise KeyboardInterrupt
