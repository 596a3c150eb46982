"""Distillation loop: presets, resume bit-identity, divergence stop, store checks, utils."""

from __future__ import annotations

import math

import pytest
import torch

import mtt_fast.matching as matching
from mtt_fast import data as mdata
from mtt_fast.config import DistillConfig, preset
from mtt_fast.distillation import CHECKPOINT, DistillDiverged, distill, init_synthetic
from mtt_fast.experts import train_experts
from mtt_fast.utils import atomic_save, read_jsonl, save_image_grid

MK = {"width": 16, "depth": 2}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny kernels: on a shared machine extra OpenMP threads only spin (10x slower)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return mdata.prepare("digits")


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("buffers")
    return train_experts(
        "digits", model_kwargs=MK, num_experts=2, epochs=3, lr=0.02, batch_size=64,
        out=out, progress=False, data=digits, seed=0,
    )  # fmt: skip


def _kw(**kw):
    base = dict(
        ipc=1, iterations=6, syn_steps=4, expert_epochs=1, max_start_epoch=3, lr_img=100.0,
        lr_lr=1e-5, lr_teacher=0.02, num_eval=0, progress=False, log_every=1,
    )  # fmt: skip
    base.update(kw)
    return base


# ---------------------------------------------------------------- presets


def test_paper_presets():
    c = preset("CIFAR-10", 1)
    assert (c.syn_steps, c.expert_epochs, c.max_start_epoch) == (50, 2, 2)
    assert (c.lr_img, c.lr_lr, c.lr_teacher, c.batch_syn, c.zca) == (100, 1e-7, 0.01, None, True)
    c = preset("cifar10", 50)
    assert (c.syn_steps, c.max_start_epoch, c.lr_img, c.lr_teacher, c.zca) == (
        30,
        40,
        1000,
        0.001,
        False,
    )
    c = preset("cifar100", 50)
    assert (c.syn_steps, c.batch_syn, c.zca) == (80, 125, True)
    assert preset("cifar100", 1).expert_epochs == 3
    assert preset("cifar100", 10).zca is False
    t = preset("tinyimagenet", 50)
    assert (t.model, t.lr_img, t.lr_lr, t.batch_syn) == ("ConvNetD4", 1e4, 1e-4, 300)
    assert preset("Tiny", 1).syn_steps == 10
    d = preset("digits", 1, iterations=7)
    assert d.iterations == 7 and d.dataset == "digits"
    assert DistillConfig.from_dict(d.to_dict()) == d


@pytest.mark.parametrize(
    "bad, word",
    [({"lr_img": -1.0}, "lr_img"), ({"syn_steps": 0}, "syn_steps"), ({"segment": "x"}, "segment"),
     ({"init": "zeros"}, "init"), ({"lr_lr": math.nan}, "lr_lr"), ({"nope": 1}, "nope"),
     ({"dsa_strategy": "blur"}, "blur")],
)  # fmt: skip
def test_config_validation(bad, word):
    with pytest.raises(ValueError, match=word):
        preset("digits", 1, **bad)


# ---------------------------------------------------------------- loop


def test_init_real_is_class_grouped(digits):
    x, y = init_synthetic(digits, 3, "real", torch.Generator().manual_seed(0))
    assert x.shape == (30, 1, 8, 8) and y.tolist() == [c for c in range(10) for _ in range(3)]
    # each image is a real training image of its class
    flat = digits.train_images.flatten(1)
    for img, lab in zip(x, y):
        hit = (flat == img.flatten()).all(1).nonzero().flatten()
        assert hit.numel() >= 1 and int(digits.train_labels[hit[0]]) == int(lab)


def test_outputs_and_reproducible(tmp_path, store, digits):
    r1 = distill(store=store, data=digits, out=tmp_path / "a", **_kw())
    r2 = distill(store=store, data=digits, **_kw())
    assert torch.equal(r1.images, r2.images) and r1.lr == r2.lr
    for f in ("synthetic.pt", "synthetic.png", "metrics.jsonl", "checkpoint.pt"):
        assert (tmp_path / "a" / f).is_file(), f
    syn = torch.load(tmp_path / "a" / "synthetic.pt", weights_only=True)
    assert torch.equal(syn["images"], r1.images) and syn["dataset"] == "digits"
    assert syn["config"]["syn_steps"] == 4 and syn["model_kwargs"] == MK
    recs = [r for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    assert [r["iteration"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert r1.iteration == 6 and r1.images.shape == (10, 1, 8, 8)
    assert not torch.equal(
        r1.images, init_synthetic(digits, 1, "real", torch.Generator().manual_seed(0))[0]
    )


class _Killed(Exception):
    pass


def test_resume_is_bit_identical(tmp_path, store, digits, monkeypatch):
    full = distill(
        store=store, data=digits, out=tmp_path / "full", checkpoint_it=3, **_kw(iterations=8)
    )
    real = matching.match
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # killed during iteration 6, after the checkpoint at 3
            raise _Killed
        return real(*a, **k)

    monkeypatch.setattr(matching, "match", dying)
    with pytest.raises(_Killed):
        distill(
            store=store, data=digits, out=tmp_path / "cut", checkpoint_it=3, **_kw(iterations=8)
        )
    monkeypatch.setattr(matching, "match", real)
    ck = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert ck["iteration"] == 3
    res = distill(
        store=store,
        data=digits,
        out=tmp_path / "cut",
        checkpoint_it=3,
        resume=True,
        **_kw(iterations=8),
    )
    assert res.iteration == 8
    assert torch.equal(res.images, full.images)
    assert res.lr == full.lr
    its = [r["iteration"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl") if "loss" in r]
    assert its == list(range(1, 9))  # no duplicated records from the killed run


def test_resume_with_other_settings_fails(tmp_path, store, digits):
    distill(store=store, data=digits, out=tmp_path, **_kw(iterations=2))
    # a setting that shapes the result, asked explicitly, cannot change: both values named
    with pytest.raises(ValueError, match=r"--syn-steps: checkpoint 4, asked 5"):
        distill(store=store, data=digits, out=tmp_path, resume=True, **_kw(iterations=4, syn_steps=5))


def test_resume_may_lower_the_optimisation_lrs_and_records_it(tmp_path, store, digits):
    distill(store=store, data=digits, out=tmp_path, **_kw(iterations=2))
    res = distill(store=store, data=digits, out=tmp_path, resume=True, **_kw(iterations=4, lr_img=5.0))
    assert res.iteration == 4 and res.config.lr_img == 5.0
    ev = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event", "").startswith("resumed")]
    assert ev and ev[0]["changed"]["lr_img"] == {"checkpoint": 100.0, "now": 5.0}
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ck["opt_img"]["param_groups"][0]["lr"] == 5.0 and ck["config"]["lr_img"] == 5.0


def test_refuses_to_replace_a_finished_run(tmp_path, store, digits):
    distill(store=store, data=digits, out=tmp_path, **_kw(iterations=1))
    with pytest.raises(ValueError, match=r"--resume .* --overwrite"):
        distill(store=store, data=digits, out=tmp_path, **_kw(iterations=1))
    res = distill(store=store, data=digits, out=tmp_path, overwrite=True, **_kw(iterations=2))
    assert res.iteration == 2


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, store, digits, monkeypatch):
    real = matching.match
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        res = real(*a, **k)
        if calls["n"] >= 5:
            res.loss = torch.tensor(float("nan"))
        return res

    monkeypatch.setattr(matching, "match", poisoned)
    with pytest.raises(DistillDiverged, match="diverged") as ei:
        distill(store=store, data=digits, out=tmp_path, checkpoint_it=2, **_kw(iterations=10))
    assert ei.value.iteration == 5 and math.isnan(ei.value.loss)
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ck["iteration"] == 4 and torch.isfinite(ck["images"]).all()
    assert ei.value.checkpoint == tmp_path / CHECKPOINT
    assert any(r.get("event") == "diverged" for r in read_jsonl(tmp_path / "metrics.jsonl"))


@pytest.mark.parametrize("what", ["images", "loss"])
def test_an_explosion_stops_and_keeps_the_last_sane_checkpoint(tmp_path, store, digits, monkeypatch, what):
    # finite but absurd (issue 10, item 5: a "good" checkpoint with images of 1e32): stop at
    # the first log point past 100x the start, before that state is checkpointed
    real = matching.match
    calls = {"n": 0}

    def blow_up(*a, **k):
        calls["n"] += 1
        res = real(*a, **k)
        if calls["n"] >= 5:
            if what == "images":
                res.grad_images = torch.full_like(res.grad_images, 1e6)
            else:
                res.loss = res.loss * 1e4
        return res

    monkeypatch.setattr(matching, "match", blow_up)
    with pytest.raises(DistillDiverged, match=f"{what} exploded") as ei:
        distill(store=store, data=digits, out=tmp_path, checkpoint_it=2, **_kw(iterations=10))
    assert ei.value.iteration == 5 and ei.value.checkpoint == tmp_path / CHECKPOINT
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ck["iteration"] == 4 and float(ck["images"].abs().amax()) < 100
    assert any(r.get("event") == "diverged" for r in read_jsonl(tmp_path / "metrics.jsonl"))


def test_negative_lr_stops(tmp_path, store, digits, monkeypatch):
    real = matching.match

    def push_lr_down(*a, **k):
        res = real(*a, **k)
        res.grad_lr = torch.tensor(1e9)  # lr_lr * 1e9 >> lr
        return res

    monkeypatch.setattr(matching, "match", push_lr_down)
    with pytest.raises(DistillDiverged, match="lr"):
        distill(store=store, data=digits, out=tmp_path, **_kw(iterations=3))


def test_store_too_short_and_missing(tmp_path, store, digits):
    with pytest.raises(ValueError, match="at least 21 epochs"):
        distill(store=store, data=digits, **_kw(max_start_epoch=20, expert_epochs=2))
    with pytest.raises(FileNotFoundError):
        distill(store=tmp_path / "none", data=digits, **_kw())
    with pytest.raises(ValueError, match="store="):
        distill(store=None, data=digits, **_kw())


# ---------------------------------------------------------------- utils


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "x.pt"
    atomic_save({"a": 1}, p)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"b": Boom()}, p)
    assert torch.load(p, weights_only=True) == {"a": 1}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.pt"]


def test_image_grid_png(tmp_path):
    from PIL import Image

    save_image_grid(torch.rand(6, 3, 5, 7), tmp_path / "g.png", nrow=3, scale=2)
    im = Image.open(tmp_path / "g.png")
    assert im.size == (3 * (14 + 1) + 1, 2 * (10 + 1) + 1) and im.mode == "RGB"


def test_matching_modes_and_host_storage_give_the_same_run(store, digits):
    """unroll, checkpoint (segments 1 and 2) and host-stored vectors: same images."""
    runs = [
        distill(store=store, data=digits, **_kw(iterations=3, matching=m, segment=s, store_on=o))
        for m, s, o in [("unroll", 1, "device"), ("checkpoint", 1, "device"),
                        ("checkpoint", 2, "host")]
    ]
    for r in runs[1:]:
        torch.testing.assert_close(r.images, runs[0].images, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="store_on"):
        preset("digits", 1, store_on="disk")


def test_metrics_say_which_matching_schedule_ran(tmp_path, store, digits):
    distill(store=store, data=digits, out=tmp_path, segment="auto", **_kw(iterations=2))
    recs = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "schedule" in r]
    assert recs and recs[0]["schedule"]["auto"] is True
    assert recs[0]["schedule"]["segment"] + recs[0]["schedule"]["recomputed_steps"] == 4
