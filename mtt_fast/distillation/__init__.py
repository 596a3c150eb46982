"""The MTT distillation loop: learn a small synthetic set (and a student lr) from experts.

Each iteration, as the paper (Cazenavette et al. 2022, Alg. 1): take the next expert of a
shuffled order (reshuffled at every pass), draw a start epoch ``t`` uniformly from
``[0, max_start_epoch)``, start a student at ``theta*_t``, run
:func:`mtt_fast.matching.match` for ``syn_steps`` steps on the (DSA-augmented) synthetic
set with the learnable lr, and take one SGD (momentum 0.5) step on the pixels (``lr_img``)
and on the lr (``lr_lr``) with the returned gradients.

The loop never reads a device value back inside an iteration: losses stay tensors and are
read every ``log_every`` iterations (and at evaluation / checkpoint points), where the run
is also checked for divergence (:class:`DistillDiverged`).

Everything random comes from two CPU ``torch.Generator`` objects seeded from ``seed``
(host choices; mini-batch and DSA draws) and the periodic evaluation runs under
``torch.random.fork_rng`` with seeds of its own, so a run is reproducible, its synthetic
set does not depend on how often it is evaluated, and a resumed run is bit-identical to an
uninterrupted one.

The package: :mod:`.state` (everything that changes, round-tripping to a checkpoint),
:mod:`.step` (one iteration), :mod:`.observers` (divergence guard, metrics, progress,
periodic evaluation, checkpoints) and :mod:`.loop`; :func:`distill` wires them.

Outputs in ``out/``: ``synthetic.pt`` (images, labels, lr, config, dataset info),
``synthetic.png`` (grid, one column per class), ``metrics.jsonl``, ``checkpoint.pt`` (the
whole state, written atomically) and ``synthetic_best.pt`` (the set at the best periodic
evaluation).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtt_fast import distributed
from mtt_fast.config import Config, reconcile_checkpoint, reconcile_store
from mtt_fast.config import preset as _preset
from mtt_fast.distillation.loop import Run, run_loop
from mtt_fast.distillation.observers import (
    CHECKPOINT,
    GRID,
    METRICS,
    SYNTHETIC,
    SYNTHETIC_BEST,
    Checkpointer,
    DistillDiverged,
    DivergenceGuard,
    MetricsLog,
    PeriodicEval,
    ProgressBar,
)
from mtt_fast.distillation.state import DistillState, init_synthetic
from mtt_fast.distillation.step import Context
from mtt_fast.synthetic import SyntheticSet, load_synthetic
from mtt_fast.utils import remove_dead_temps, save_image_grid

__all__ = [
    "distill",
    "DistillResult",
    "DistillDiverged",
    "DistillState",
    "SyntheticSet",
    "init_synthetic",
    "load_synthetic",
    "save_grid",
    "CHECKPOINT",
    "SYNTHETIC",
    "SYNTHETIC_BEST",
    "GRID",
    "METRICS",
]

# files a finished or interrupted run leaves in its output folder
_RUN_FILES = (CHECKPOINT, SYNTHETIC, SYNTHETIC_BEST, METRICS, GRID)


@dataclass
class DistillResult:
    """What :func:`distill` returns.

    Attributes:
        images: (K * ipc, C, H, W) float32 synthetic images (CPU, processed space: the
            data's normalisation or ZCA), grouped by class.
        labels: (K * ipc,) int64 class labels.
        lr: the learned student lr.
        history: logged records (``{"iteration", "loss", "lr", ...}`` and evaluation
            records ``{"iteration", "eval": {model: {"mean", "std"}}}``).
        best: the best periodic evaluation ``{"iteration", "model", "mean", "std"}`` (test
            accuracy; selected on the test set: the paper's way of reporting, optimistic),
            or None.
        out: the output folder, or None.
        config: the :class:`~mtt_fast.config.Config` used (after reconciliation).
        iteration: iterations done.
        seconds: wall time of this call.
    """

    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    out: Path | None = None
    config: Config | None = None
    iteration: int = 0
    seconds: float = 0.0


def save_grid(images: torch.Tensor, data: Any, path: str | os.PathLike, ipc: int) -> Path:
    """Save a PNG grid of a class-grouped synthetic set: one column per class, one row per
    image index.

    Args:
        images: (K * ipc, C, H, W) processed images (mapped to pixels by ``data.to_pixels``,
            which undoes ZCA or mean/std normalisation).
        data: the :class:`mtt_fast.data.Prepared` they come from (or anything with
            ``to_pixels``; without it images are min-max scaled).
        path: PNG file.
        ipc: images per class.
    """
    x = images.detach().float().cpu()
    to_pixels = getattr(data, "to_pixels", None)
    if to_pixels is not None:
        px = to_pixels(x.to(_data_device(data))).cpu()
    else:
        lo, hi = x.amin(), x.amax()
        px = (x - lo) / (hi - lo).clamp_min(1e-12)
    k = px.shape[0] // ipc
    px = px.reshape(k, ipc, *px.shape[1:]).transpose(0, 1).reshape(px.shape)
    w = px.shape[-1]
    scale = max(1, min(math.ceil(64 / w), 4096 // max(1, k * (w + 1))))
    return save_image_grid(px, path, nrow=k, scale=scale)


def _data_device(data: Any) -> torch.device:
    t = getattr(data, "train_images", None)
    return t.device if torch.is_tensor(t) else torch.device("cpu")


def _data_info(data: Any) -> dict:
    return {
        "name": getattr(data, "name", None),
        "classes": list(getattr(data, "classes", [])),
        "num_classes": int(data.num_classes),
        "channels": int(data.channels),
        "im_size": list(data.im_size),
        "zca": bool(getattr(data, "zca_flag", False)),
        "mean": list(getattr(data, "mean", ()) or ()),
        "std": list(getattr(data, "std", ()) or ()),
    }


def _open_store(store: Any):
    from mtt_fast.experts import TrajectoryStore

    if store is None:
        raise ValueError(
            "distill needs expert trajectories: pass store= (a TrajectoryStore or its folder; "
            "make one with mtt_fast.train_experts or `mtt-fast buffer`)"
        )
    return store if isinstance(store, TrajectoryStore) else TrajectoryStore.open(store)


def _check_fits(cfg: Config, st: Any, data: Any) -> None:
    n = data.num_classes * cfg.ipc
    if cfg.batch_syn is not None and cfg.batch_syn > n:
        raise ValueError(
            f"batch_syn={cfg.batch_syn} is larger than the synthetic set "
            f"({data.num_classes} classes x ipc {cfg.ipc} = {n} images)"
        )
    if st.num_experts < 1:
        raise ValueError(f"the store {st.path} holds no experts")
    if st.epochs < cfg.min_epochs:
        raise ValueError(
            f"max_start_epoch={cfg.max_start_epoch} and expert_epochs={cfg.expert_epochs} "
            f"need experts with at least {cfg.min_epochs} epochs (start epochs up to "
            f"{cfg.max_start_epoch - 1}, plus {cfg.expert_epochs}); the experts in "
            f"{st.path} have {st.epochs}. Lower max_start_epoch / expert_epochs or train "
            f"longer experts"
        )


def _check_out(out: Path | None, resume: bool, overwrite: bool) -> None:
    """Refuse to replace a run's files unless asked to resume or overwrite."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file, not a folder")
    if out.is_dir():
        remove_dead_temps(out)  # half-written files of a killed run
    if resume:
        return
    present = [f for f in _RUN_FILES if (out / f).exists()]
    if not present:
        return
    if not overwrite:
        raise ValueError(
            f"{out} already holds a distillation ({', '.join(present)}); pass --resume to "
            "continue it or --overwrite to replace it"
        )
    for f in present:
        (out / f).unlink()


def distill(
    dataset: str | None = None,
    root: str | os.PathLike | None = None,
    store: Any = None,
    ipc: int = 1,
    iterations: int | None = None,
    preset: bool | Config = True,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    progress: bool = True,
    data: Any = None,
    model: str | None = None,
    eval_it: int | None = None,
    num_eval: int | None = None,
    epoch_eval_train: int | None = None,
    matching: str | None = None,
    segment: int | str | None = None,
    init: str | None = None,
    dsa_strategy: str | None = None,
    overwrite: bool = False,
    explicit: Iterable[str] | None = None,
    **overrides: Any,
) -> DistillResult:
    """Distill ``dataset`` into ``ipc`` images per class by matching expert trajectories.

    Args:
        dataset: dataset name for :func:`mtt_fast.data.prepare` (default: the store's).
        root: data folder.
        store: the experts: a :class:`~mtt_fast.experts.TrajectoryStore` or its folder.
        ipc: images per class.
        iterations: distillation iterations (default: the preset's).
        preset: True (default) starts from :func:`mtt_fast.config.preset` for
            ``(dataset, ipc)``; False from generic defaults; or a ready
            :class:`~mtt_fast.config.Config`.
        out: output folder (``synthetic.pt``, ``synthetic.png``, ``metrics.jsonl``,
            ``checkpoint.pt``, ``synthetic_best.pt``); None writes nothing.
        resume: continue from ``out/checkpoint.pt`` when it exists (bit-identical to an
            uninterrupted run). Settings that shape the result come from the checkpoint; an
            explicit different one is an error; ``lr_img`` / ``lr_lr`` may be changed
            explicitly (recorded in the metrics).
        device: where images, experts and students live.
        seed: seed of every generator (default: the config's, 0).
        progress: tqdm bar with the loss and lr.
        data: a :class:`mtt_fast.data.Prepared` to use instead of loading ``dataset``.
        model: architecture (default: the store's; must match the store).
        eval_it, num_eval, epoch_eval_train, matching, segment, init, dsa_strategy: the
            :class:`~mtt_fast.config.Config` settings of these names.
        overwrite: replace the files of an earlier run in ``out`` (else refused).
        explicit: names of the settings the user gave explicitly (default: every keyword
            setting passed here that is not None). An explicit setting is never silently
            replaced by a store's or checkpoint's value: a conflict stops the run.
        **overrides: any other :class:`~mtt_fast.config.Config` setting (``syn_steps``,
            ``expert_epochs``, ``max_start_epoch``, ``lr_img``, ``lr_lr``, ``lr_teacher``,
            ``batch_syn``, ``zca``, ``log_every``, ``eval_models``, ``model_kwargs``, ...).

    Returns:
        :class:`DistillResult`.

    Raises:
        ValueError: a bad setting, a store that does not fit (model, data, too few epochs),
            an explicit setting that contradicts the store or checkpoint, or an output
            folder that holds another run.
        FileNotFoundError: a missing store.
        DistillDiverged: the run diverged or exploded; the last good checkpoint is kept.
    """
    t_start = time.perf_counter()
    st = _open_store(store)
    named = dict(
        iterations=iterations,
        seed=seed,
        model=model,
        eval_it=eval_it,
        num_eval=num_eval,
        epoch_eval_train=epoch_eval_train,
        matching=matching,
        segment=segment,
        init=init,
        dsa_strategy=dsa_strategy,
    )
    given = {k: v for k, v in {**overrides, **named}.items() if v is not None}
    if explicit is None:
        explicit = set(given)
    cfg = reconcile_store(_config(dataset, ipc, preset, given, st), st.meta, explicit, str(st.path))
    out_p = Path(out) if out is not None else None
    device = distributed.setup(device)  # under torchrun: join the group, this rank's device
    main_rank = distributed.is_main()
    distributed.on_main(lambda: _check_out(out_p, resume, overwrite))
    ckpt = out_p / CHECKPOINT if out_p is not None else None
    ck = None
    changed: dict = {}
    if resume and ckpt is not None and ckpt.exists():
        ck = DistillState.read_checkpoint(ckpt)
        cfg, changed = reconcile_checkpoint(cfg, ck["config"], explicit, str(ckpt))
    elif resume:
        import warnings

        warnings.warn(
            f"resume=True but {ckpt if ckpt else 'no out folder'} has no checkpoint; starting afresh",
            stacklevel=2,
        )
    if data is None:
        from mtt_fast.data import prepare

        data = prepare(cfg.dataset, root=root, zca=cfg.zca, device=device)
    elif bool(getattr(data, "zca_flag", False)) != cfg.zca:
        raise ValueError(
            f"data has zca_flag={getattr(data, 'zca_flag', False)} but the run needs zca={cfg.zca}"
        )
    _check_fits(cfg, st, data)
    from mtt_fast.models import get_model

    with torch.random.fork_rng(devices=[]):  # the student's own weights are never used
        net = get_model(cfg.model, data.channels, data.num_classes, data.im_size, **cfg.model_kwargs).to(device)
    st.check_model(net)
    ctx = Context(cfg, st, net, device)
    shape = (data.num_classes * cfg.ipc, data.channels, *data.im_size)
    state = (
        DistillState.from_checkpoint(ck, cfg, device, shape, ckpt)
        if ck is not None
        else DistillState.fresh(cfg, data, device)
    )
    run = Run(state, ctx, data, _data_info(data), out_p, ck is not None, changed)
    from mtt_fast.evaluation import evaluate

    # every rank holds the same state; rank 0 alone evaluates and writes (under torchrun)
    evaluator = PeriodicEval(evaluate) if cfg.num_eval > 0 and main_rank else None
    writes = out_p is not None and main_rank
    run_loop(run, _observers(out_p if writes else None, progress and main_rank), evaluator)
    if writes:
        run.synthetic().save(out_p / SYNTHETIC)
        save_grid(state.images, data, out_p / GRID, cfg.ipc)
        if not ckpt.exists():  # iterations == 0
            Checkpointer(out_p).on_checkpoint(run)
    distributed.barrier()  # every rank returns once the outputs are written
    return DistillResult(
        images=state.images.detach().cpu().clone(),
        labels=state.labels.cpu().clone(),
        lr=state.lr,
        history=list(state.history),
        best=state.best,
        out=out_p,
        config=cfg,
        iteration=state.iteration,
        seconds=time.perf_counter() - t_start,
    )


def _config(dataset: str | None, ipc: int, preset: bool | Config, given: dict, st) -> Config:
    """The run's configuration before the store is consulted: the preset for (dataset, ipc)
    (or the given :class:`Config`, or the defaults without a preset) with ``given`` on top.
    The dataset defaults to the store's."""
    if dataset is None:
        dataset = preset.dataset if isinstance(preset, Config) else (st.meta.get("dataset") or "digits")
    if isinstance(preset, Config):
        return preset.replace(dataset=dataset, ipc=ipc if ipc is not None else preset.ipc, **given)
    if preset:
        return _preset(dataset, ipc, **given)
    return Config(dataset=dataset, ipc=ipc).replace(**given)


def _observers(out: Path | None, progress: bool) -> list:
    """The loop's observers: the divergence guard (on every rank: all stop together), then,
    where this process writes (``out``), the metrics log, the bar and the checkpoints."""
    observers: list = [DivergenceGuard()]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        observers.append(MetricsLog(out))
    if progress:
        observers.append(ProgressBar())
    if out is not None:
        observers.append(Checkpointer(out))
    return observers

