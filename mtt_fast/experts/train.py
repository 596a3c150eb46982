"""Train expert trajectories (the original ``buffer.py``) into a :class:`TrajectoryStore`.

Protocol (defaults as the original): a fresh model per expert, SGD lr 0.01 with no
momentum and no weight decay, batch 256, DSA on every real batch, a flat snapshot before
training and after every epoch, optionally lr x0.1 after epoch ``epochs // 2 + 1``. The
epochs run in :func:`mtt_fast.training.fit`, the loop evaluation uses too. Every finished
expert is written atomically, and so is the state of an unfinished one after every
epoch (``expert_0000i.partial.pt``): re-running the same command resumes, losing at most
the epoch that was running.

Several processes may fill one store at once: each claims an expert index before training
it (:meth:`TrajectoryStore.next_to_train`), trains expert ``i`` from seed ``seed + i`` and
publishes it under index ``i``; a process that finds the remaining experts claimed by
others waits for them (and takes over the expert of a claimant that dies).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mtt_fast import models, training
from mtt_fast.augment import DEFAULT_STRATEGY, parse_strategy
from mtt_fast.experts.meta import ExpertTraining, Preprocessing, StoreMeta
from mtt_fast.experts.store import META, TrajectoryStore
from mtt_fast.utils import atomic_save

__all__ = ["train_experts"]


def _claim_some(store: TrajectoryStore, want: int, n: int) -> list | int | None:
    """Up to ``n`` claims on experts still to train (see
    :meth:`TrajectoryStore.next_to_train`): a list of claims, or what that returned."""
    first = store.next_to_train(want)
    if first is None or isinstance(first, int):
        return first
    claims = [first]
    while len(claims) < n:
        more = store.next_to_train(want)
        if more is None or isinstance(more, int):
            break
        claims.append(more)
    return claims


def _partial_name(i: int) -> str:
    return f"expert_{i:05d}.partial.pt"


def _load_partial(path: Path, index: int, epochs: int, num_params: int) -> dict | None:
    """The saved state of an unfinished expert, or None (no file, or one that does not fit
    this expert: said on stderr, and the expert is trained from the start)."""
    if not path.exists():
        return None
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
        shape = tuple(st["snaps"].shape)
        if st.get("format") != _PARTIAL_FORMAT or st["index"] != index:
            raise ValueError(f"not expert {index}'s state")
        if not (1 <= st["epoch"] < epochs and shape == (st["epoch"] + 1, num_params)):
            raise ValueError(f"epoch {st['epoch']} and snapshots {shape} do not fit "
                             f"{epochs} epochs of {num_params} parameters")  # fmt: skip
    except Exception as e:  # noqa: BLE001 - any unreadable state means: start over
        print(f"ignoring {path} ({type(e).__name__}: {e}); training expert {index} from "
              "its first epoch", file=sys.stderr)  # fmt: skip
        return None
    return st


_PARTIAL_FORMAT = "mtt-fast-partial-expert"


def _train_one(nets, gens, claims, x, y, record, kw, folder: Path) -> list[torch.Tensor]:
    """One expert, as buffer.py: :func:`mtt_fast.training.fit` with SGD.

    After every epoch the unfinished expert's whole state (snapshots so far, model,
    optimizer, the generator of its shuffles and DSA draws) is saved atomically to
    ``expert_0000i.partial.pt`` in the store; whoever claims expert ``i`` next resumes
    from it, and the expert comes out as an uninterrupted run would make it, bit for bit.
    """
    net, claim, gen = nets[0], claims[0], gens[0]
    epochs = kw["epochs"]
    snaps = torch.empty(epochs + 1, sum(p.numel() for p in net.parameters()), device=x.device)
    snaps[0] = _flat_params(net)
    part = folder / _partial_name(claim.index)
    saved = _load_partial(part, claim.index, epochs, snaps.shape[1])
    start, opt_state = 0, None
    if saved is not None:
        start, opt_state = int(saved["epoch"]), saved["optimizer"]
        snaps[: start + 1] = saved["snaps"].to(snaps)
        net.load_state_dict(saved["model"])
        gen.set_state(saved["generator"])
    t0 = time.perf_counter()

    def after_epoch(st: training.EpochStats) -> None:
        snaps[st.epoch] = _flat_params(net)
        record(claim.index, st, net, t0)
        claim.touch()

    def save_state(st: training.EpochStats, opt: torch.optim.Optimizer) -> None:
        if st.epoch < epochs:
            atomic_save({"format": _PARTIAL_FORMAT, "index": claim.index, "epoch": st.epoch,
                         "snaps": snaps[: st.epoch + 1].cpu(), "model": net.state_dict(),
                         "optimizer": opt.state_dict(), "generator": gen.get_state()},
                        part)  # fmt: skip

    training.fit(
        net, x, y, training.sgd(net, kw["momentum"], kw["weight_decay"]), kw["lr"],
        epochs, kw["batch_size"], kw["dsa_strategy"], gen,
        decay_after=kw["decay_after"], on_epoch=after_epoch,
        start=start, optimizer_state=opt_state, on_state=save_state,
    )  # fmt: skip
    return [snaps]


def _train_together(nets, gens, claims, x, y, record, kw, folder: Path) -> list[torch.Tensor]:
    """Several experts at once (:func:`mtt_fast.experts.vectorized.train_together`); these
    resume per expert, not per epoch."""
    from mtt_fast.experts.vectorized import train_together
    from mtt_fast.models.functional import load_flat

    probe = nets[0]
    t0 = time.perf_counter()

    def after_epoch(epoch: int, flats: list[torch.Tensor], stats: list[training.EpochStats]) -> None:
        for c, flat, st in zip(claims, flats, stats, strict=True):
            load_flat(probe, flat)
            record(c.index, st, probe, t0)
            c.touch()

    return train_together(nets, gens, x, y, on_epoch=after_epoch, **kw)


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
    poll: float = 2.0,
    at_once: int = 1,
) -> TrajectoryStore:
    """Train ``num_experts`` experts on the real data and store their trajectories.

    Expert ``i`` is initialised after ``torch.manual_seed(seed + i)`` and shuffled /
    augmented from a generator seeded with ``seed + i``, so each expert is reproducible
    on its own and a resumed run trains the same experts as an uninterrupted one.

    Args:
        dataset: dataset name for :func:`mtt_fast.data.prepare` (default ``"digits"``).
        root: data folder passed to ``prepare`` (needed by every dataset but ``digits``).
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
        model_kwargs: ConvNet-family overrides for ``get_model`` (e.g. ``{"width": 16}``);
            the resolved :func:`mtt_fast.models.model_spec` is stored.
        at_once: experts trained together in this process, vectorised with ``torch.func``
            (:mod:`mtt_fast.experts.vectorized`); each is the expert it would be alone, up to
            floating-point reassociation. 1 (default): one at a time, as buffer.py.
        poll: seconds between looks at the store while other processes train its last
            experts (this call returns when the store holds ``num_experts``).

    Returns:
        The :class:`TrajectoryStore` at ``out`` holding ``num_experts`` experts.

    Raises:
        ValueError: ``out`` holds a store made with different settings (names both).
    """
    from mtt_fast import data as _data

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
    strategy = dsa_strategy if dsa and parse_strategy(dsa_strategy) else None
    training_meta = ExpertTraining(
        lr=float(lr),
        momentum=float(momentum),
        weight_decay=float(weight_decay),
        batch_size=int(batch_size),
        dsa_strategy=strategy or "none",
        lr_decay=bool(lr_decay),
        seed=int(seed),
    )
    meta = _store_meta(data, dataset, model, model_kwargs, int(epochs), bool(zca), training_meta)
    out = Path(out)
    store = _open_or_create(out, meta)
    fit_kw = dict(lr=lr, epochs=epochs, batch_size=batch_size, dsa_strategy=strategy,
                  momentum=momentum, weight_decay=weight_decay,
                  decay_after=training.decay_epoch(epochs) if lr_decay else None)  # fmt: skip
    # (decay_after: buffer.py's lr_schedule)
    todo = max(num_experts - store.num_experts, 0)
    with _EpochLog(out / "log.jsonl", data, device, log,
                   f"experts {store.num_experts}->{num_experts}" if progress and todo else None,
                   todo * epochs) as record:  # fmt: skip
        x, y = data.train_images.to(device), data.train_labels.to(device)
        waiting = None
        while (claims := _claim_some(store, num_experts, max(1, int(at_once)))) is not None:
            if isinstance(claims, int):  # the rest is being trained by other processes
                if waiting != claims and progress:
                    print(f"waiting for {claims} expert(s) other processes are training into "
                          f"{out}", file=sys.stderr)  # fmt: skip
                waiting = claims
                time.sleep(poll)
                continue
            try:
                nets, gens = [], []
                for c in claims:  # expert i: seed + i, whoever trains it, however grouped
                    torch.manual_seed(seed + c.index)
                    nets.append(models.from_spec(meta.model).to(device))
                    gens.append(torch.Generator(device=device).manual_seed(seed + c.index))
                train = _train_one if len(claims) == 1 else _train_together
                trained = train(nets, gens, claims, x, y, record, fit_kw, out)
                for c, snaps in zip(claims, trained, strict=True):
                    store.add_expert(snaps.cpu(), index=c.index)
                    (out / _partial_name(c.index)).unlink(missing_ok=True)
            finally:
                for c in claims:
                    c.release()
    store.refresh()
    for part in out.glob("expert_*.partial.pt"):  # killed between publishing and removing
        if part.with_name(part.name.replace(".partial.pt", ".npy")).exists():
            part.unlink(missing_ok=True)
    return store


def _store_meta(data, dataset: str, model: str, model_kwargs: Mapping | None, epochs: int,
                zca: bool, training_meta: ExpertTraining) -> StoreMeta:  # fmt: skip
    """What a store of these experts records: model spec and layout, data, preprocessing."""
    spec = models.model_spec(
        model, data.channels, data.num_classes, data.im_size, **dict(model_kwargs or {})
    )
    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    return StoreMeta(
        epochs=epochs,
        layout=models.layout(models.from_spec(spec)),
        model=spec,
        dataset=dataset,
        classes=list(data.classes),
        preprocessing=Preprocessing(
            zca=zca,
            zca_eps=getattr(getattr(data, "zca", None), "eps", None) if zca else None,
            mean=None if zca or not mean else tuple(mean),
            std=None if zca or not std else tuple(std),
        ),
        training=training_meta,
    )


def _open_or_create(out: Path, meta: StoreMeta) -> TrajectoryStore:
    """The store at ``out``: made with ``meta``, or opened (and checked against it) when it
    exists, also when another process made it meanwhile."""
    if not (out / META).exists():
        try:
            return TrajectoryStore.create(out, meta)
        except FileExistsError:
            pass
    return TrajectoryStore.open(out, expect=meta)


class _EpochLog:
    """One record per finished expert epoch: ``log.jsonl`` line, the caller's ``log``, the bar.

    A context manager: opens the JSON log (appending) and the progress bar, closes both."""

    def __init__(self, path: Path, data, device, log, bar_desc: str | None, bar_total: int):
        self.path, self.log, self.bar_desc, self.bar_total = path, log, bar_desc, bar_total
        self.test_x, self.test_y = data.test_images.to(device), data.test_labels.to(device)
        self.file = self.bar = None

    def __enter__(self) -> _EpochLog:
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        if self.bar_desc:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.bar_total, desc=self.bar_desc, unit="epoch")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        self.file.close()

    def __call__(self, i: int, st: training.EpochStats, net: torch.nn.Module, t0: float) -> None:
        test_acc = training.evaluate_accuracy(net, self.test_x, self.test_y)
        rec = {"expert": i, "epoch": st.epoch, "train_loss": st.loss, "train_acc": st.acc,
               "test_acc": test_acc, "lr": st.lr, "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.log is not None:
            self.log(rec)
        if self.bar is not None:
            self.bar.set_postfix(
                expert=i, train=f"{st.acc:.3f}", test=f"{test_acc:.3f}", refresh=False
            )
            self.bar.update(1)
