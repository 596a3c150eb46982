"""Vectorised experts (issue 11): several experts trained at once in one process are the
experts trained one at a time, up to floating-point reassociation."""

from __future__ import annotations

import numpy as np
import pytest

from mtt_fast.experts import TrajectoryStore, train_experts
from mtt_fast.models import networks

KW = dict(num_experts=3, epochs=2, progress=False, model_kwargs={"width": 8, "depth": 2})


@pytest.mark.parametrize(
    "extra",
    [{}, {"momentum": 0.9, "weight_decay": 5e-4, "lr_decay": True}],
    ids=["buffer.py", "momentum-wd-decay"],
)
def test_experts_at_once_equal_one_at_a_time(tmp_path, extra, monkeypatch):
    alone = train_experts(out=tmp_path / "alone", **KW, **extra)
    together = train_experts(out=tmp_path / "together", at_once=3, **KW, **extra)
    # the reference's own reassociation error: the same experts through the plain modules
    monkeypatch.setattr(networks, "FUSED_NORM_BLOCK", False)
    plain = train_experts(out=tmp_path / "plain", **KW, **extra)
    for i in range(3):
        a, b, c = (np.array(s.expert(i)) for s in (alone, together, plain))
        moved = np.abs(a[-1] - a[0]).max()
        assert moved > 1e-3  # the experts trained
        own = np.abs(a - c).max()
        assert np.abs(a - b).max() <= max(10 * own, 1e-6 * np.abs(a).max()), (i, own)
        assert not np.array_equal(a, np.array(alone.expert((i + 1) % 3)))


def test_at_once_groups_claims_and_tops_up(tmp_path):
    out = tmp_path / "s"
    train_experts(out=out, at_once=2, **{**KW, "num_experts": 1})
    store = train_experts(out=out, at_once=2, **KW)  # 2 more: one group of two
    assert store.num_experts == 3 and not list(out.glob("*.claim"))
    ref = train_experts(out=tmp_path / "ref", **KW)
    for i in range(3):
        np.testing.assert_allclose(store.expert(i), ref.expert(i), rtol=0, atol=1e-5)
    log = (out / "log.jsonl").read_text().splitlines()
    assert len(log) == 3 * KW["epochs"]
    assert isinstance(TrajectoryStore.open(out), TrajectoryStore)
