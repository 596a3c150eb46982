"""TrajectoryStore: round trip, lazy reads, atomic writes, refusals, buffer import."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from mtt_fast.models import get_model
from mtt_fast.models.functional import ParamLayout, flatten, layout
from mtt_fast.store import TrajectoryStore, import_buffers

LAYOUT = ParamLayout(("a.weight", "a.bias"), ((3, 4), (3,)))  # P = 15


def _meta(**kw):
    m = {"model": "Toy", "dataset": "toyset", "zca": True, "epochs": 4, "layout": LAYOUT}
    m.update(kw)
    return m


def _traj(seed: int, epochs: int = 4, p: int = 15) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((epochs + 1, p)).astype(np.float32)


def test_round_trip_lazy(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s", _meta())
    assert store.num_experts == 0 and store.num_params == 15 and store.epochs == 4
    trajs = [_traj(i) for i in range(3)]
    assert [store.add_expert(t) for t in trajs[:2]] == [0, 1]
    assert store.add_expert(torch.from_numpy(trajs[2]).double()) == 2
    names = sorted(os.listdir(tmp_path / "s"))
    assert names == ["expert_00000.npy", "expert_00001.npy", "expert_00002.npy", "meta.json"]

    again = TrajectoryStore.open(tmp_path / "s", expect={"model": "Toy", "zca": True})
    assert again.num_experts == 3 and len(again) == 3
    assert again.layout == LAYOUT
    assert again.meta["version"] and again.meta["format"] == "mtt-fast-trajectories"
    mm = again.expert(1)
    assert isinstance(mm, np.memmap) and mm.dtype == np.float32 and mm.shape == (5, 15)
    start, target = again.pair(2, 1, 3)
    assert start.dtype == torch.float32 and start.shape == (15,)
    torch.testing.assert_close(start, torch.from_numpy(trajs[2][1]))
    torch.testing.assert_close(target, torch.from_numpy(trajs[2][3]))
    torch.testing.assert_close(again.params(0, 4, device="cpu"), torch.from_numpy(trajs[0][4]))
    torch.testing.assert_close(again.params(-1, 0), torch.from_numpy(trajs[2][0]))
    with pytest.raises(IndexError, match="out of range"):
        again.params(3, 0)
    with pytest.raises(IndexError, match="0..4"):
        again.params(0, 5)


def test_add_expert_validates(tmp_path):
    store = TrajectoryStore.create(tmp_path, _meta())
    with pytest.raises(ValueError, match=r"\(5, 15\)"):
        store.add_expert(np.zeros((4, 15), np.float32))
    bad = _traj(0)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*\[2\]"):
        store.add_expert(bad)
    assert store.num_experts == 0
    with pytest.raises(FileExistsError):
        TrajectoryStore.create(tmp_path, _meta())
    with pytest.raises(ValueError, match="epochs"):
        TrajectoryStore.create(tmp_path / "x", {"model": "Toy", "num_params": 3})


def test_killed_writer_leaves_whole_experts(tmp_path, monkeypatch):
    store = TrajectoryStore.create(tmp_path, _meta())
    store.add_expert(_traj(0))
    # a writer killed between writing and renaming: its temp file (dead pid) remains
    dead = tmp_path / ".expert_00001.npy.tmp-999999999-0123456789ab"
    dead.write_bytes(b"\x93NUMPY partial")
    # an exception in the middle of np.save: nothing but the whole expert stays
    real_save = np.save

    def broken_save(f, arr):
        f.write(b"\x93NUMPY half an expert")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        store.add_expert(_traj(1))
    monkeypatch.setattr(np, "save", real_save)
    assert store.num_experts == 1
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == [dead.name]

    again = TrajectoryStore.open(tmp_path)
    assert not dead.exists()  # cleaned on open
    assert again.num_experts == 1
    assert again.add_expert(_traj(2)) == 1  # the count continues
    np.testing.assert_array_equal(again.expert(1), _traj(2))


def test_mismatch_is_refused_naming_both(tmp_path):
    TrajectoryStore.create(tmp_path, _meta(model="ConvNet", dataset="cifar10"))
    with pytest.raises(ValueError) as e:
        TrajectoryStore.open(tmp_path, expect={"model": "ConvNetD4", "dataset": "cifar10"})
    msg = str(e.value)
    assert str(tmp_path) in msg and "ConvNet on cifar10 (zca=True)" in msg
    assert "asked for model ConvNetD4 on cifar10" in msg
    with pytest.raises(ValueError, match="zca"):
        TrajectoryStore.open(tmp_path, expect={"zca": False})
    with pytest.raises(ValueError, match="layout"):
        TrajectoryStore.open(tmp_path, expect={"layout": ParamLayout(("a",), ((15,),))})
    TrajectoryStore.open(tmp_path, expect={"layout": LAYOUT, "num_params": 15})  # ok
    store = TrajectoryStore.open(tmp_path)
    with pytest.raises(ValueError, match="parameters"):
        store.check_model(torch.nn.Linear(2, 2))


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        TrajectoryStore.open(tmp_path)
    store = TrajectoryStore.create(tmp_path, _meta())
    store.add_expert(_traj(0))
    (tmp_path / "expert_00001.npy").write_bytes(b"not a numpy file")
    again = TrajectoryStore.open(tmp_path)
    with pytest.raises(ValueError, match="expert_00001.npy"):
        again.expert(1)
    np.save(tmp_path / "expert_00002.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"expert_00002.npy.*\(5, 15\)"):
        TrajectoryStore.open(tmp_path).expert(2)
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(ValueError, match="meta.json"):
        TrajectoryStore.open(tmp_path)


def _tiny():
    return get_model("ConvNet", 1, 3, (8, 8), width=4, depth=1)


def _original_buffer(n_experts: int, epochs: int) -> list:
    """Experts as the original buffer.py saves them: lists of per-layer tensors."""
    experts = []
    for e in range(n_experts):
        torch.manual_seed(e)
        net = _tiny()
        snaps = []
        for _ in range(epochs + 1):
            snaps.append([p.detach().cpu().clone() for p in net.parameters()])
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.01 * torch.randn_like(p))
        experts.append(snaps)
    return experts


def test_import_original_buffers(tmp_path):
    bufs = [_original_buffer(2, 3), _original_buffer(1, 3)]
    files = []
    for n, b in enumerate(bufs):
        files.append(tmp_path / f"replay_buffer_{n}.pt")
        torch.save(b, files[-1])
    store = import_buffers(
        tmp_path, tmp_path / "store", "ConvNet", "digits", 1, 3, 8, zca=False,
        model_kwargs={"width": 4, "depth": 1}, lr=0.01,
    )  # fmt: skip
    assert store.num_experts == 3 and store.epochs == 3
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert meta["model"] == "ConvNet" and meta["lr"] == 0.01 and meta["im_size"] == [8, 8]
    assert meta["model_spec"]["width"] == 4
    assert store.layout == layout(_tiny())
    flat = [torch.cat([p.reshape(-1) for p in snap]) for snap in bufs[0][1]]
    torch.testing.assert_close(store.params(1, 2), flat[2])
    net = _tiny()
    store.check_model(net)
    torch.testing.assert_close(flatten(net).shape, store.params(2, 0).shape)
    with pytest.raises(FileExistsError):
        import_buffers(files[:1], tmp_path / "store", "ConvNet", "digits", 1, 3, 8,
                       model_kwargs={"width": 4, "depth": 1})  # fmt: skip
    # a layer whose shape differs from the model's is named
    with pytest.raises(ValueError, match=r"layer 0 \(features.0.weight\).*\(4, 1, 3, 3\)"):
        import_buffers(files[0], tmp_path / "other", "ConvNet", "digits", 1, 3, 8,
                       model_kwargs={"width": 5, "depth": 1})  # fmt: skip


class Payload:
    """Anything that is not a tensor or container: needs full unpickling."""

    def __init__(self) -> None:
        self.x = 1


def test_import_refuses_arbitrary_pickles(tmp_path):
    f = tmp_path / "replay_buffer_0.pt"
    torch.save([Payload()], f)
    with pytest.raises(ValueError, match=r"refusing.*replay_buffer_0.pt"):
        import_buffers([f], tmp_path / "s", "ConvNet", "digits", 1, 3, 8,
                       model_kwargs={"width": 4, "depth": 1})  # fmt: skip
    assert not (tmp_path / "s" / "meta.json").exists()
