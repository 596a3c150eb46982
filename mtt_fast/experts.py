"""Train expert trajectories (the original ``buffer.py``) into a :class:`TrajectoryStore`.

Protocol (defaults as the original): a fresh model per expert, SGD lr 0.01 with no
momentum and no weight decay, batch 256, DSA on every real batch, a flat snapshot before
training and after every epoch, optionally lr x0.1 after half of the epochs. Every
finished expert is written atomically, so re-running the same command resumes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mtt_fast._version import __version__
from mtt_fast.augment import DEFAULT_STRATEGY
from mtt_fast.store import META, TrajectoryStore, import_buffers
from mtt_fast.training import evaluate_accuracy, train_epoch

__all__ = ["train_experts", "import_buffers", "TrajectoryStore"]

# settings that must agree between a store and a run that resumes it
_RESUME_KEYS = (
    "model",
    "model_spec",
    "dataset",
    "zca",
    "epochs",
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "dsa",
    "dsa_strategy",
    "lr_decay",
    "seed",
    "num_params",
    "layout",
)


def _flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def train_experts(
    dataset: str = "digits",
    root: str | os.PathLike | None = None,
    model: str = "ConvNet",
    num_experts: int = 5,
    epochs: int = 50,
    lr: float = 0.01,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    dsa: bool = True,
    dsa_strategy: str = DEFAULT_STRATEGY,
    zca: bool = False,
    lr_decay: bool = False,
    out: str | os.PathLike = "buffers",
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    data: Any = None,
    log: Callable[[dict], None] | None = None,
    model_kwargs: Mapping | None = None,
) -> TrajectoryStore:
    """Train ``num_experts`` experts on the real data and store their trajectories.

    Expert ``i`` is initialised after ``torch.manual_seed(seed + i)`` and shuffled /
    augmented from a generator seeded with ``seed + i``, so each expert is reproducible
    on its own and a resumed run trains the same experts as an uninterrupted one.

    Args:
        dataset: dataset name for :func:`mtt_fast.data.prepare` (default ``"digits"``).
        root: data folder passed to ``prepare``.
        model: model name (``mtt_fast.models.MODEL_NAMES``).
        num_experts: total experts wanted in the store (existing ones count).
        epochs: epochs per expert; each expert has ``epochs + 1`` snapshots.
        lr, momentum, weight_decay: SGD settings (original: 0.01, 0, 0).
        batch_size: real mini-batch size (256).
        dsa: augment every real batch with DSA (mode ``'S'``).
        dsa_strategy: DSA groups.
        zca: ZCA-whiten the data (ignored when ``data`` is given: its ``zca_flag`` counts).
        lr_decay: multiply the lr by 0.1 after epoch ``epochs // 2 + 1`` (0-based), i.e.
            once ``epochs // 2 + 2`` epochs are done, as the original's ``--decay``
            (``lr_schedule = [train_epochs // 2 + 1]``); the SGD state is rebuilt.
        out: store folder; ``out/log.jsonl`` gets one JSON line per epoch.
        device: where the data and the model live.
        seed: base seed.
        progress: show a tqdm bar with train / test accuracy.
        data: a :class:`mtt_fast.data.Prepared` to reuse instead of loading ``dataset``.
        log: called with every per-epoch record (dict) besides the JSON log.
        model_kwargs: ConvNet-family overrides for ``get_model`` (e.g. ``{"width": 16}``).

    Returns:
        The :class:`TrajectoryStore` at ``out`` holding ``num_experts`` experts.

    Raises:
        ValueError: ``out`` holds a store made with different settings (names both).
    """
    from mtt_fast import data as _data
    from mtt_fast import models as _models
    from mtt_fast.models.functional import layout as _layout

    if num_experts < 0 or epochs < 1:
        raise ValueError(f"need num_experts >= 0 and epochs >= 1, got {num_experts}, {epochs}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    device = torch.device(device)
    if data is None:
        data = _data.prepare(dataset, root=root, zca=zca, device=device)
    else:
        dataset = getattr(data, "name", dataset)
        zca = bool(getattr(data, "zca_flag", zca))
    train_x = data.train_images.to(device)
    train_y = data.train_labels.to(device)
    test_x = data.test_images.to(device)
    test_y = data.test_labels.to(device)
    kw = dict(model_kwargs or {})
    spec = _models.model_spec(model, data.channels, data.num_classes, data.im_size, **kw)
    probe = _models.get_model(model, data.channels, data.num_classes, data.im_size, **kw)
    lay = _layout(probe)
    del probe
    zca_eps = getattr(getattr(data, "zca", None), "eps", None)
    settings = {
        "model": model,
        "model_spec": spec,
        "dataset": dataset,
        "zca": bool(zca),
        "epochs": int(epochs),
        "lr": float(lr),
        "momentum": float(momentum),
        "weight_decay": float(weight_decay),
        "batch_size": int(batch_size),
        "dsa": bool(dsa),
        "dsa_strategy": dsa_strategy if dsa else None,
        "lr_decay": bool(lr_decay),
        "seed": int(seed),
        "num_params": lay.num_params,
        "layout": lay.to_dict(),
    }
    out = Path(out)
    if (out / META).exists():
        store = TrajectoryStore.open(out, expect={k: settings[k] for k in _RESUME_KEYS})
    else:
        meta = dict(settings)
        meta.update(
            channels=data.channels,
            im_size=list(data.im_size),
            num_classes=data.num_classes,
            classes=list(data.classes),
            preprocessing={
                "zca": bool(zca),
                "zca_eps": zca_eps,
                "mean": list(getattr(data, "mean", ()) or ()),
                "std": list(getattr(data, "std", ()) or ()),
            },
            version=__version__,
        )
        store = TrajectoryStore.create(out, meta)
    start = store.num_experts
    todo = max(num_experts - start, 0)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo * epochs, desc=f"experts {start}->{num_experts}", unit="epoch")
    strategy = dsa_strategy if dsa else None
    try:
        with open(out / "log.jsonl", "a", encoding="utf-8") as logf:
            for i in range(start, num_experts):
                torch.manual_seed(seed + i)
                net = _models.get_model(
                    model, data.channels, data.num_classes, data.im_size, **kw
                ).to(device)
                gen = torch.Generator(device=device).manual_seed(seed + i)
                snaps = torch.empty(epochs + 1, lay.num_params, device=device)
                snaps[0] = _flat_params(net)
                cur_lr = float(lr)

                def make_opt(rate: float, net=net) -> torch.optim.Optimizer:
                    return torch.optim.SGD(
                        net.parameters(), lr=rate, momentum=momentum, weight_decay=weight_decay
                    )

                opt = make_opt(cur_lr)
                t0 = time.perf_counter()
                for e in range(epochs):
                    loss, acc = train_epoch(net, train_x, train_y, opt, batch_size, strategy, gen)
                    test_acc = evaluate_accuracy(net, test_x, test_y)
                    snaps[e + 1] = _flat_params(net)
                    rec = {
                        "expert": i,
                        "epoch": e + 1,
                        "train_loss": loss,
                        "train_acc": acc,
                        "test_acc": test_acc,
                        "lr": cur_lr,
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                    if log is not None:
                        log(rec)
                    if bar is not None:
                        bar.set_postfix(
                            expert=i, train=f"{acc:.3f}", test=f"{test_acc:.3f}", refresh=False
                        )
                        bar.update(1)
                    if lr_decay and e == epochs // 2 + 1:  # buffer.py's lr_schedule
                        cur_lr *= 0.1
                        opt = make_opt(cur_lr)
                store.add_expert(snaps.cpu())
    finally:
        if bar is not None:
            bar.close()
    store.refresh()
    return store
