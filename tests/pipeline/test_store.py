"""TrajectoryStore: round trip, lazy reads, atomic writes, refusals, typed metadata, stores of
format version 1, buffer import."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from mtt_fast.experts import (
    ExpertTraining,
    Preprocessing,
    StoreMeta,
    TrajectoryStore,
    import_buffers,
)
from mtt_fast.models import get_model
from mtt_fast.models.functional import ParamLayout, flatten, layout

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
    with pytest.raises(ValueError, match="expert_00001.npy is not what was expected.*retrain"):
        TrajectoryStore.open(tmp_path)  # found on open, not when sampled mid-run
    np.save(tmp_path / "expert_00001.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"expert_00001.npy.*\(5, 15\)"):
        TrajectoryStore.open(tmp_path)
    (tmp_path / "expert_00001.npy").unlink()
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(ValueError, match="meta.json"):
        TrajectoryStore.open(tmp_path)


def _tiny(num_classes: int = 3):
    return get_model("ConvNet", 1, num_classes, (8, 8), width=4, depth=1)


def _original_buffer(n_experts: int, epochs: int, num_classes: int = 3) -> list:
    """Experts as the original buffer.py saves them: lists of per-layer tensors."""
    experts = []
    for e in range(n_experts):
        torch.manual_seed(e)
        net = _tiny(num_classes)
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
    assert meta["format_version"] == 2 and meta["training"]["lr"] == 0.01
    assert meta["model"]["name"] == "ConvNet" and meta["model"]["im_size"] == [8, 8]
    assert meta["model"]["width"] == 4 and "model_spec" not in meta and "zca" not in meta
    assert meta["preprocessing"]["zca"] is False and len(meta["imported_from"]) == 2
    assert store.meta.training == ExpertTraining(lr=0.01)  # only what the importer was told
    assert store.meta.preprocessing.mean is None  # digits' statistics are not constants
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
    with pytest.raises(ValueError, match=r"replay_buffer_0.pt is not what was expected.*refused"):
        import_buffers([f], tmp_path / "s", "ConvNet", "digits", 1, 3, 8,
                       model_kwargs={"width": 4, "depth": 1})  # fmt: skip
    assert not (tmp_path / "s" / "meta.json").exists()


def test_import_takes_the_shape_from_the_dataset_registry(tmp_path):
    f = tmp_path / "replay_buffer_0.pt"
    torch.save(_original_buffer(1, 2, num_classes=10), f)
    kw = {"model_kwargs": {"width": 4, "depth": 1}}
    store = import_buffers(f, tmp_path / "s", "ConvNet", "Digits", seed=7, source="paper", **kw)
    m = store.meta
    assert (m.channels, m.num_classes, m.im_size, m.dataset) == (1, 10, (8, 8), "digits")
    assert m.training == ExpertTraining(seed=7) and m.extra == {"source": "paper"}
    assert m.preprocessing == Preprocessing()  # digits: statistics computed, not constants
    store.build_model()  # the spec rebuilds the imported layout
    with pytest.raises(ValueError, match=r"dataset 'mine' is not in the dataset registry: give"):
        import_buffers(f, tmp_path / "t", "ConvNet", "mine", **kw)
    with pytest.raises(ValueError, match=r"dataset 'npz' has no fixed shape: give channels"):
        import_buffers(f, tmp_path / "t", "ConvNet", "npz", **kw)
    assert not (tmp_path / "t").exists()
    # explicit shapes win; ZCA records its eps and no mean/std; the MNIST constants otherwise
    z = import_buffers(f, tmp_path / "z", "ConvNet", "cifar10", 1, 10, 8, zca=True, **kw)
    assert z.meta.preprocessing == Preprocessing(zca=True, zca_eps=0.1)
    mn = import_buffers(f, tmp_path / "m", "ConvNet", "MNIST", 1, 10, 8, **kw)
    assert mn.meta.preprocessing == Preprocessing(mean=(0.1307,), std=(0.3081,))
    assert mn.meta.dataset == "mnist"


# ------------------------------------------------------------------ typed metadata


def _spec_meta(**kw) -> StoreMeta:
    net = _tiny(10)
    args = dict(epochs=2, layout=layout(net), model=net.spec, dataset="Digits",
                classes=[str(i) for i in range(10)],
                training=ExpertTraining(lr=0.01, batch_size=256, dsa_strategy="none", seed=0))  # fmt: skip
    args.update(kw)
    return StoreMeta(**args)


def test_store_meta_round_trip_and_facts_once(tmp_path):
    m = _spec_meta(preprocessing=Preprocessing(zca=True, zca_eps=0.1))
    assert m.dataset == "digits" and m.num_params == layout(_tiny(10)).num_params
    assert (m.model_name, m.channels, m.num_classes, m.im_size) == ("ConvNet", 1, 10, (8, 8))
    assert m.model_kwargs == {"width": 4, "depth": 1, "act": "relu", "norm": "instancenorm",
                              "pooling": "avgpooling"}  # fmt: skip
    assert StoreMeta.from_json(m.to_json()) == m
    d = json.loads(m.to_json())
    assert sorted(d) == ["classes", "dataset", "epochs", "extra", "format", "format_version",
                         "imported_from", "layout", "model", "preprocessing", "training",
                         "version"]  # fmt: skip
    assert m.to_json().count('"zca"') == 1 and "num_params" not in d  # derived from the layout
    store = TrajectoryStore.create(tmp_path, m)
    assert TrajectoryStore.open(tmp_path).meta == m
    # the flat keys of format version 1 still read
    assert m["zca"] is True and m.get("model") == "ConvNet" and m["model_spec"] == dict(m.model)
    assert m["lr"] == 0.01 and m["dsa"] is False and m.get("dsa_strategy") is None
    assert m.get("momentum", 0.5) == 0.5 and "momentum" not in m
    with pytest.raises(KeyError):
        m["momentum"]
    # models are rebuilt from the stored spec
    net = store.build_model()
    assert layout(net) == m.layout and net.spec == dict(m.model)
    with pytest.raises(TypeError):
        m.model["width"] = 8  # read-only


def test_store_meta_refuses_bad_values():
    with pytest.raises(ValueError, match=r"'epochs' >= 1, got 0"):
        _spec_meta(epochs=0)
    with pytest.raises(ValueError, match=r"num_params=3 disagrees with its layout"):
        _spec_meta(num_params=3)
    with pytest.raises(ValueError, match="needs a parameter 'layout'"):
        StoreMeta(epochs=2)
    with pytest.raises(ValueError, match=r"model must be a model spec with a 'name'"):
        _spec_meta(model={"width": 3})
    with pytest.raises(ValueError, match="3 class names for a model with 10 classes"):
        _spec_meta(classes=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"unknown preprocessing key\(s\) \['whiten'\]"):
        _spec_meta(preprocessing={"whiten": True})
    with pytest.raises(ValueError, match=r"lr must be > 0, got -1"):
        ExpertTraining(lr=-1)
    with pytest.raises(ValueError, match=r"zca must be a bool, got 'yes'"):
        Preprocessing(zca="yes")
    d = _spec_meta().to_dict()
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['zca'\] in format version 2"):
        StoreMeta.from_dict({**d, "zca": True})
    with pytest.raises(ValueError, match=r"format_version 3 is newer .* upgrade mtt-fast"):
        StoreMeta.from_dict({**d, "format_version": 3})
    with pytest.raises(ValueError, match=r"not a mtt-fast-trajectories store"):
        StoreMeta.from_dict({**d, "format": "other"})


def test_newer_format_is_refused_naming_the_file(tmp_path):
    TrajectoryStore.create(tmp_path, _spec_meta())
    d = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**d, "format_version": 9}))
    with pytest.raises(ValueError, match=r"meta.json: store format_version 9 .* upgrade mtt-fast"):
        TrajectoryStore.open(tmp_path)


def test_build_model_needs_a_registry_spec(tmp_path):
    store = TrajectoryStore.create(tmp_path, _meta())  # model "Toy": no spec to build from
    with pytest.raises(ValueError, match=r"cannot build its model: model spec .* lacks"):
        store.build_model()


def test_resume_refusal_names_the_spec_option(tmp_path):
    TrajectoryStore.create(tmp_path, _spec_meta())
    net8 = get_model("ConvNet", 1, 10, (8, 8), width=8, depth=1)
    asked = _spec_meta(model=net8.spec, layout=layout(net8))
    with pytest.raises(ValueError) as e:
        TrajectoryStore.open(tmp_path, expect=asked)
    msg = str(e.value)
    assert "model width: store has 4, asked 8" in msg and "layout: store has" in msg
    assert "ConvNet on digits (zca=False)" in msg and "\n" not in msg
    TrajectoryStore.open(tmp_path, expect=_spec_meta(classes=None, version="other"))  # ok


# ------------------------------------------------------------------ stores of format version 1


def _write_v1_store(path, lr=0.01, n_experts=1):
    """A store as the code before StoreMeta wrote it: the flat meta.json of format 1."""
    net = _tiny(10)
    lay = layout(net)
    meta = {
        "model": "ConvNet", "model_spec": net.spec, "dataset": "digits", "zca": False,
        "epochs": 2, "lr": lr, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 256,
        "dsa": True, "dsa_strategy": "color_crop_cutout_flip_scale_rotate", "lr_decay": False,
        "seed": 5, "num_params": lay.num_params, "layout": lay.to_dict(), "channels": 1,
        "im_size": [8, 8], "num_classes": 10, "classes": [str(i) for i in range(10)],
        "preprocessing": {"zca": False, "zca_eps": None, "mean": [0.3055], "std": [0.3759]},
        "version": "0.1.0", "format": "mtt-fast-trajectories", "format_version": 1,
    }  # fmt: skip
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    for i in range(n_experts):
        np.save(path / f"expert_{i:05d}.npy", _traj(i, 2, lay.num_params))
    return meta


def test_version_1_store_opens_and_resumes_untouched(tmp_path):
    from mtt_fast.experts import train_experts

    old = tmp_path / "old"
    raw = _write_v1_store(old)
    before = (old / "meta.json").read_bytes()
    store = TrajectoryStore.open(old)
    m = store.meta
    assert m.model == raw["model_spec"] and m.layout == ParamLayout.from_dict(raw["layout"])
    assert m.num_params == raw["num_params"] and not m.zca and m.dataset == "digits"
    assert m.training == ExpertTraining(0.01, 0.0, 0.0, 256, raw["dsa_strategy"], False, 5)
    assert m.preprocessing == Preprocessing(mean=(0.3055,), std=(0.3759,)) and m.extra == {}
    for k in ("model", "zca", "lr", "dsa", "dsa_strategy", "seed", "layout", "im_size"):
        assert m[k] == raw[k], k
    np.testing.assert_array_equal(store.expert(0), _traj(0, 2, m.num_params))
    store.check_model(store.build_model())
    # today's train_experts resumes it with the same settings: the file stays as it was
    kw = dict(num_experts=2, epochs=2, batch_size=256, seed=5, progress=False,
              model_kwargs={"width": 4, "depth": 1})  # fmt: skip
    resumed = train_experts(out=old, **kw)
    assert resumed.num_experts == 2 and (old / "meta.json").read_bytes() == before
    fresh = train_experts(out=tmp_path / "new", **kw)
    np.testing.assert_array_equal(resumed.expert(1), fresh.expert(1))  # expert 1 is expert 1
    with pytest.raises(ValueError, match=r"lr: store has 0.01, asked 0.02"):
        train_experts(out=old, **{**kw, "num_experts": 3, "lr": 0.02})
    # the flat keys of an imported v1 store (extra facts kept, dsa off -> "none")
    imp = tmp_path / "imp"
    raw = _write_v1_store(imp)
    raw.update(dsa=False, dsa_strategy=None, imported_from=["a.pt"], note="x")
    (imp / "meta.json").write_text(json.dumps(raw))
    m = TrajectoryStore.open(imp).meta
    assert m.training.dsa_strategy == "none" and m.imported_from == ("a.pt",)
    assert m.extra == {"note": "x"} and m["dsa"] is False


# ------------------------------------------------------------------ atomic files of many writers


def test_concurrent_create_and_publish(tmp_path):
    from mtt_fast.utils import atomic_publish, pid_temp_path, remove_dead_temps

    TrajectoryStore.create(tmp_path / "s", _spec_meta())
    with pytest.raises(FileExistsError, match="already exists"):
        TrajectoryStore.create(tmp_path / "s", _spec_meta(epochs=3))
    assert TrajectoryStore.open(tmp_path / "s").epochs == 2

    def put(text):
        return lambda f: f.write(text)

    dest = tmp_path / "a.txt"
    assert atomic_publish(put(b"one"), dest, overwrite=False) == dest
    with pytest.raises(FileExistsError):
        atomic_publish(put(b"two"), dest, overwrite=False)
    nxt = atomic_publish(
        put(b"two"), dest, overwrite=False, next_name=lambda p: p.with_suffix(".b")
    )
    assert dest.read_bytes() == b"one" and nxt.read_bytes() == b"two"
    atomic_publish(put(b"three"), dest)
    assert dest.read_bytes() == b"three"
    mine = pid_temp_path(tmp_path / "x.npy")
    mine.write_bytes(b"")
    dead = tmp_path / ".x.npy.tmp-999999999-0123456789ab"
    dead.write_bytes(b"")
    other = tmp_path / ".x.npy.1234.tmp"  # not a pid-tagged name: never touched
    other.write_bytes(b"")
    assert remove_dead_temps(tmp_path) == [dead]
    assert mine.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(
        [mine.name, other.name]
    )
