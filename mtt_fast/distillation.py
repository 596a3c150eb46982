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

Outputs in ``out/``: ``synthetic.pt`` (images, labels, lr, config, dataset info),
``synthetic.png`` (grid, one column per class), ``metrics.jsonl``, ``checkpoint.pt`` (the
whole state, written atomically) and ``synthetic_best.pt`` (the set at the best periodic
evaluation).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtt_fast._version import __version__
from mtt_fast.presets import DistillConfig
from mtt_fast.presets import preset as _preset
from mtt_fast.utils import (
    MetricsWriter,
    atomic_save,
    atomic_write_text,
    rng_state,
    save_image_grid,
    set_rng_state,
    to_jsonable,
)

__all__ = [
    "distill",
    "DistillResult",
    "DistillDiverged",
    "init_synthetic",
    "load_synthetic",
    "save_grid",
    "CHECKPOINT",
    "SYNTHETIC",
]

CHECKPOINT = "checkpoint.pt"
SYNTHETIC = "synthetic.pt"
SYNTHETIC_BEST = "synthetic_best.pt"
GRID = "synthetic.png"
METRICS = "metrics.jsonl"
_CKPT_VERSION = 1

# settings a resumed run must share with its checkpoint (the rest may change on resume:
# iterations, evaluation settings, logging, matching mode / segment which give the same
# gradient)
_RESUME_KEYS = (
    "dataset",
    "ipc",
    "model",
    "model_kwargs",
    "syn_steps",
    "expert_epochs",
    "max_start_epoch",
    "lr_img",
    "lr_lr",
    "lr_teacher",
    "batch_syn",
    "zca",
    "dsa_strategy",
    "init",
    "seed",
)


class DistillDiverged(RuntimeError):
    """The loss became non-finite or the learned lr left ``(0, inf)``.

    Attributes:
        iteration: the iteration at which it was detected.
        loss: the offending loss (float, may be nan / inf).
        lr: the learned lr at that point.
        checkpoint: the last good checkpoint (kept on disk), or None.
    """

    def __init__(
        self, message: str, iteration: int, loss: float, lr: float, checkpoint: Path | None
    ) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.loss = loss
        self.lr = lr
        self.checkpoint = checkpoint


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
            accuracy; selected on the test set, so report it as "best seen during
            distillation", not as the final result), or None.
        out: the output folder, or None.
        config: the :class:`~mtt_fast.presets.DistillConfig` used.
        iteration: iterations done.
        seconds: wall time of this call.
    """

    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    out: Path | None = None
    config: DistillConfig | None = None
    iteration: int = 0
    seconds: float = 0.0


# ---------------------------------------------------------------------------- helpers


def _config(
    dataset: str,
    ipc: int,
    preset: bool | DistillConfig,
    overrides: dict,
) -> DistillConfig:
    kw = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(preset, DistillConfig):
        base = preset
        if dataset is not None and dataset != base.dataset:
            kw["dataset"] = dataset
        if ipc is not None and ipc != base.ipc:
            kw["ipc"] = ipc
        return base.replace(**kw) if kw else base
    if preset:
        return _preset(dataset, ipc, **kw)
    return DistillConfig(dataset=dataset, ipc=ipc).replace(**kw)


def _open_store(store: Any):
    from mtt_fast.store import TrajectoryStore

    if store is None:
        raise ValueError(
            "distill needs expert trajectories: pass store= (a TrajectoryStore or its folder; "
            "make one with mtt_fast.train_experts or `mtt-fast buffer`)"
        )
    if isinstance(store, TrajectoryStore):
        return store
    return TrajectoryStore.open(store)


def init_synthetic(
    data: Any, ipc: int, init: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting synthetic set, grouped by class.

    Args:
        data: :class:`mtt_fast.data.Prepared`.
        ipc: images per class.
        init: ``"real"`` (``ipc`` distinct random training images of each class) or
            ``"noise"`` (standard normal pixels).
        generator: CPU generator for the draws.

    Returns:
        ``images (K * ipc, C, H, W)`` float32 and ``labels (K * ipc,)`` int64, on the CPU.
    """
    k = data.num_classes
    labels = torch.arange(k).repeat_interleave(ipc)
    shape = (k * ipc, data.channels, *data.im_size)
    if init == "noise":
        return torch.randn(shape, generator=generator), labels
    if init != "real":
        raise ValueError(f"init must be 'real' or 'noise', got {init!r}")
    y = data.train_labels.cpu()
    x = data.train_images
    picks = []
    for c in range(k):
        idx = torch.nonzero(y == c).flatten()
        if idx.numel() == 0:
            raise ValueError(f"class {c} has no training images to initialise from")
        if idx.numel() >= ipc:
            sel = idx[torch.randperm(idx.numel(), generator=generator)[:ipc]]
        else:  # fewer images than ipc: draw with replacement
            sel = idx[torch.randint(idx.numel(), (ipc,), generator=generator)]
        picks.append(sel)
    sel = torch.cat(picks)
    return x[sel.to(x.device)].detach().to("cpu", torch.float32).clone(), labels


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


def load_synthetic(path: str | os.PathLike) -> dict:
    """Read a ``synthetic.pt`` (``torch.load(weights_only=True)``); see
    :func:`mtt_fast.evaluation.load_synthetic`."""
    from mtt_fast.evaluation import load_synthetic as _load

    return _load(path)


def _eval_models_kwargs(cfg: DistillConfig, models: tuple[str, ...]) -> dict:
    return {m: (dict(cfg.model_kwargs) if m == cfg.model else {}) for m in models}


# ---------------------------------------------------------------------------- main loop


def distill(
    dataset: str | None = None,
    root: str | os.PathLike | None = None,
    store: Any = None,
    ipc: int = 1,
    iterations: int | None = None,
    preset: bool | DistillConfig = True,
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
    **overrides: Any,
) -> DistillResult:
    """Distill ``dataset`` into ``ipc`` images per class by matching expert trajectories.

    Args:
        dataset: dataset name for :func:`mtt_fast.data.prepare` (default: the store's
            dataset, else ``"digits"``).
        root: data folder.
        store: the experts: a :class:`~mtt_fast.store.TrajectoryStore` or its folder.
        ipc: images per class.
        iterations: distillation iterations (default: the preset's).
        preset: True (default) starts from :func:`mtt_fast.presets.preset` for
            ``(dataset, ipc)``; False from generic defaults; or a ready
            :class:`~mtt_fast.presets.DistillConfig`.
        out: output folder (``synthetic.pt``, ``synthetic.png``, ``metrics.jsonl``,
            ``checkpoint.pt``); None writes nothing.
        resume: continue from ``out/checkpoint.pt`` when it exists (bit-identical to an
            uninterrupted run); the settings that shape the result must be the same.
        device: where images, experts and students live.
        seed: seed of every generator (default: the config's, 0).
        progress: tqdm bar with the loss and lr.
        data: a :class:`mtt_fast.data.Prepared` to use instead of loading ``dataset``.
        model: architecture (default: the store's; must match the store).
        eval_it: evaluate and checkpoint every ``eval_it`` iterations (0: only at the end).
        num_eval: models per evaluation (0 disables evaluation).
        epoch_eval_train: training epochs per evaluation model.
        matching: ``"checkpoint"`` (default) or ``"unroll"``, see :func:`mtt_fast.matching.match`.
        segment: checkpoint segment length (int or ``"auto"``; default 1).
        init: ``"real"`` (default) or ``"noise"``.
        dsa_strategy: DSA groups (default all six; ``"none"`` disables).
        **overrides: any other :class:`~mtt_fast.presets.DistillConfig` field
            (``syn_steps``, ``expert_epochs``, ``max_start_epoch``, ``lr_img``, ``lr_lr``,
            ``lr_teacher``, ``batch_syn``, ``zca``, ``log_every``, ``eval_models``, ...).
            ``None`` values are ignored.

    Returns:
        :class:`DistillResult`.

    Raises:
        ValueError: a bad setting, a store that does not fit (model, data, too few epochs),
            or a checkpoint made with other settings.
        FileNotFoundError: a missing store.
        DistillDiverged: the loss became non-finite or the lr left (0, inf); the last good
            checkpoint is kept.
    """
    t_start = time.perf_counter()
    st = _open_store(store)
    meta = st.meta
    if dataset is None:
        dataset = meta.get("dataset") or "digits"
    store_model = meta.get("model")
    store_kwargs = _store_model_kwargs(meta)
    user_zca = overrides.get("zca")
    if model is None and store_model:
        model = store_model
        if "model_kwargs" not in overrides or overrides["model_kwargs"] is None:
            overrides["model_kwargs"] = store_kwargs
    cfg = _config(
        dataset,
        ipc,
        preset,
        dict(
            overrides,
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
        ),
    )
    # preprocessing must be the experts'
    store_zca = meta.get("zca", (meta.get("preprocessing") or {}).get("zca"))
    if store_zca is not None and bool(store_zca) != cfg.zca:
        if user_zca is not None:
            raise ValueError(
                f"zca={cfg.zca} was asked, but the experts in {st.path} were trained with "
                f"zca={bool(store_zca)}; distill with the experts' preprocessing"
            )
        cfg = cfg.replace(zca=bool(store_zca))
    device = torch.device(device)
    if data is None:
        from mtt_fast.data import prepare

        data = prepare(cfg.dataset, root=root, zca=cfg.zca, device=device)
    elif bool(getattr(data, "zca_flag", False)) != cfg.zca:
        raise ValueError(
            f"data has zca_flag={getattr(data, 'zca_flag', False)} but the run needs zca={cfg.zca}"
        )
    store_ds = meta.get("dataset")
    data_name = getattr(data, "name", None)
    if store_ds and data_name and _norm_name(store_ds) != _norm_name(data_name):
        raise ValueError(
            f"the experts in {st.path} were trained on {store_ds!r}, the data is {data_name!r}"
        )
    return _Loop(cfg, st, data, device, out, resume, progress, t_start).run()


def _norm_name(s: str) -> str:
    return s.lower().replace("-", "").replace("_", "")


def _store_model_kwargs(meta: dict) -> dict:
    spec = meta.get("model_spec") or {}
    if not spec:
        return {}
    from mtt_fast.models.registry import CONVNET_DEFAULTS, CONVNET_VARIANTS

    name = meta.get("model")
    if name not in CONVNET_VARIANTS:
        return {}
    base = {**CONVNET_DEFAULTS, **CONVNET_VARIANTS[name]}
    return {k: spec[k] for k in CONVNET_DEFAULTS if k in spec and spec[k] != base[k]}


class _Loop:
    """State of one distillation run (kept in one object so it can be checkpointed)."""

    def __init__(self, cfg, st, data, device, out, resume, progress, t_start) -> None:
        from mtt_fast.models import get_model

        self.cfg, self.st, self.data, self.device = cfg, st, data, device
        self.out = Path(out) if out is not None else None
        self.progress, self.t_start = progress, t_start
        self.resume = resume
        self.n = data.num_classes * cfg.ipc
        if cfg.batch_syn is not None and cfg.batch_syn > self.n:
            raise ValueError(
                f"batch_syn={cfg.batch_syn} is larger than the synthetic set "
                f"({data.num_classes} classes x ipc {cfg.ipc} = {self.n} images)"
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
        # the student architecture (its weights are never used: match is functional)
        with torch.random.fork_rng(devices=[]):
            self.net = get_model(
                cfg.model, data.channels, data.num_classes, data.im_size, **cfg.model_kwargs
            ).to(device)
        st.check_model(self.net)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # host: init, experts, epochs
        self.gen_match = torch.Generator().manual_seed(cfg.seed + 1)  # batches + DSA
        self.generators = {"host": self.gen, "match": self.gen_match}

    # -------------------------------------------------------------- state
    def _fresh(self) -> None:
        cfg = self.cfg
        images, labels = init_synthetic(self.data, cfg.ipc, cfg.init, self.gen)
        self.images = images.to(self.device).requires_grad_(True)
        self.labels = labels.to(self.device)
        self.syn_lr = torch.tensor(cfg.lr_teacher, device=self.device).requires_grad_(True)
        self._make_opts()
        self.it = 0
        self.order: list[int] = []
        self.best: dict | None = None
        self.history: list[dict] = []

    def _make_opts(self) -> None:
        self.opt_img = torch.optim.SGD([self.images], lr=self.cfg.lr_img, momentum=0.5)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=self.cfg.lr_lr, momentum=0.5)

    def _state(self) -> dict:
        return {
            "format": "mtt-fast-distill-checkpoint",
            "format_version": _CKPT_VERSION,
            "version": __version__,
            "iteration": self.it,
            "images": self.images.detach().cpu().clone(),
            "labels": self.labels.cpu().clone(),
            "syn_lr": self.syn_lr.detach().cpu().clone(),
            "opt_img": self.opt_img.state_dict(),
            "opt_lr": self.opt_lr.state_dict(),
            "rng": rng_state(self.generators),
            "expert_order": list(self.order),
            "best": self.best,
            "history": to_jsonable(self.history),
            "config": self.cfg.to_dict(),
            "store": str(self.st.path),
            "dataset": _data_info(self.data),
        }

    def _load(self, path: Path) -> None:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot read checkpoint {path}: {e}") from e
        if not isinstance(ck, dict) or ck.get("format") != "mtt-fast-distill-checkpoint":
            raise ValueError(f"{path} is not a mtt-fast distillation checkpoint")
        old = DistillConfig.from_dict(ck["config"])
        diff = [k for k in _RESUME_KEYS if getattr(old, k) != getattr(self.cfg, k)]
        if diff:
            detail = "; ".join(
                f"{k}: checkpoint {getattr(old, k)!r}, now {getattr(self.cfg, k)!r}" for k in diff
            )
            raise ValueError(
                f"cannot resume from {path}: it was made with other settings ({detail}); "
                "use the same settings or a fresh output folder"
            )
        want = (self.n, self.data.channels, *self.data.im_size)
        if tuple(ck["images"].shape) != want:
            raise ValueError(
                f"checkpoint {path} holds images {tuple(ck['images'].shape)}, the run needs {want}"
            )
        self.images = ck["images"].to(self.device).requires_grad_(True)
        self.labels = ck["labels"].to(self.device)
        self.syn_lr = ck["syn_lr"].to(self.device).requires_grad_(True)
        self._make_opts()
        self.opt_img.load_state_dict(ck["opt_img"])
        self.opt_lr.load_state_dict(ck["opt_lr"])
        # the lr_img / lr_lr of the checkpoint equal the config's (checked above)
        set_rng_state(ck["rng"], self.generators)
        self.it = int(ck["iteration"])
        self.order = [int(i) for i in ck["expert_order"]]
        self.best = ck["best"]
        self.history = list(ck["history"])

    def _checkpoint(self) -> None:
        if self.out is not None:
            atomic_save(self._state(), self.out / CHECKPOINT)

    # -------------------------------------------------------------- steps
    def _next_expert(self) -> int:
        if not self.order:
            self.order = torch.randperm(self.st.num_experts, generator=self.gen).tolist()
        return self.order.pop(0)

    def _step(self):
        from mtt_fast import matching

        cfg = self.cfg
        e = self._next_expert()
        t = int(torch.randint(cfg.max_start_epoch, (1,), generator=self.gen))
        start, target = self.st.pair(e, t, t + cfg.expert_epochs, device=self.device)
        res = matching.match(
            self.net,
            start,
            target,
            self.images,
            self.labels,
            self.syn_lr,
            cfg.syn_steps,
            batch_syn=cfg.batch_syn,
            augment=cfg.dsa,
            generator=self.gen_match,
            mode=cfg.matching,
            segment=cfg.segment,
            store_on=cfg.store_on,
        )
        self.opt_img.zero_grad(set_to_none=True)
        self.opt_lr.zero_grad(set_to_none=True)
        self.images.grad = res.grad_images.to(self.images.dtype)
        self.syn_lr.grad = res.grad_lr.reshape(self.syn_lr.shape).to(self.syn_lr.dtype)
        self.opt_img.step()
        self.opt_lr.step()
        return res.loss.detach(), e, t

    # -------------------------------------------------------------- evaluation
    def _evaluate(self) -> dict:
        from mtt_fast.evaluation import evaluate

        cfg = self.cfg
        models = cfg.models_to_eval
        lr = float(self.syn_lr.detach())
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            rep = evaluate(
                self.images.detach(),
                self.labels,
                lr,
                self.data,
                models,
                cfg.num_eval,
                cfg.epoch_eval_train,
                dsa_strategy=cfg.dsa,
                seed=cfg.seed * 1_000_003 + self.it,
                device=self.device,
                progress=False,
                model_kwargs=_eval_models_kwargs(cfg, models),
                source="mtt",
            )
        res = rep.results["mtt"]
        rec = {
            "iteration": self.it,
            "lr": lr,
            "eval": {
                m: {"mean": r["mean"], "std": r["std"], "runs": r["runs"]} for m, r in res.items()
            },
        }
        head = res[models[0]]
        if self.best is None or head["mean"] > self.best["mean"]:
            self.best = {
                "iteration": self.it,
                "model": models[0],
                "mean": head["mean"],
                "std": head["std"],
                "lr": lr,
            }
            if self.out is not None:
                atomic_save(self._synthetic(), self.out / SYNTHETIC_BEST)
        return rec

    def _synthetic(self) -> dict:
        return {
            "images": self.images.detach().cpu().clone(),
            "labels": self.labels.cpu().clone(),
            "lr": float(self.syn_lr.detach()),
            "dataset": getattr(self.data, "name", self.cfg.dataset),
            "zca": bool(getattr(self.data, "zca_flag", False)),
            "ipc": self.cfg.ipc,
            "model": self.cfg.model,
            "model_kwargs": dict(self.cfg.model_kwargs),
            "iteration": self.it,
            "config": self.cfg.to_dict(),
            "dataset_info": _data_info(self.data),
            "best": self.best,
            "version": __version__,
        }

    # -------------------------------------------------------------- run
    def _diverged(self, losses: list, base_it: int, log) -> None:
        """Raise DistillDiverged if a pending loss is non-finite or the lr left (0, inf)."""
        lr = float(self.syn_lr.detach())
        vals = torch.stack(losses).tolist() if losses else []
        bad = next((i for i, v in enumerate(vals) if not math.isfinite(v)), None)
        img_ok = bool(torch.isfinite(self.images.detach()).all())
        if bad is None and math.isfinite(lr) and lr > 0 and img_ok:
            return
        it = base_it + (bad + 1 if bad is not None else len(vals))
        loss = vals[bad] if bad is not None else (vals[-1] if vals else float("nan"))
        ck = self.out / CHECKPOINT if self.out is not None else None
        ck = ck if ck is not None and ck.exists() else None
        if bad is not None:
            why = f"the matching loss became {loss} at iteration {it}"
        elif not (math.isfinite(lr) and lr > 0):
            why = f"the learned lr became {lr:g} (must stay > 0) by iteration {it}"
        else:
            why = f"the synthetic images became non-finite by iteration {it}"
        hint = (
            "lower lr_img / lr_lr"
            if bad is None or not img_ok
            else "lower lr_img / lr_lr or lr_teacher"
        )
        kept = f"; the last good checkpoint is kept at {ck}" if ck else ""
        msg = f"distillation diverged: {why} ({hint}){kept}"
        if log is not None:
            log.write(
                {"iteration": it, "event": "diverged", "loss": loss, "lr": lr, "message": msg}
            )
        raise DistillDiverged(msg, it, loss, lr, ck)

    def run(self) -> DistillResult:
        cfg = self.cfg
        ckpt = self.out / CHECKPOINT if self.out is not None else None
        resumed = False
        if self.resume and ckpt is not None and ckpt.exists():
            self._load(ckpt)
            resumed = True
        else:
            if self.resume:
                warnings.warn(
                    f"resume=True but {ckpt if ckpt else 'no out folder'} has no checkpoint; "
                    "starting afresh",
                    stacklevel=3,
                )
            self._fresh()
        log = None
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            if resumed:  # drop records written after the checkpoint by the killed run
                text = "".join(json.dumps(to_jsonable(r)) + "\n" for r in self.history)
                atomic_write_text(text, self.out / METRICS)
            log = MetricsWriter(self.out / METRICS, truncate=not resumed)
            if not resumed:
                log.write({"event": "start", "config": cfg.to_dict(), "store": str(self.st.path)})
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.iterations, initial=self.it, desc="distill", unit="it")
        evaluate_now = cfg.num_eval > 0
        ck_every = cfg.checkpoint_every
        try:
            pending: list[torch.Tensor] = []
            base = self.it
            t_last = time.perf_counter()
            while self.it < cfg.iterations:
                loss, _, _ = self._step()
                pending.append(loss)
                self.it += 1
                done = self.it
                at_end = done == cfg.iterations
                at_eval = evaluate_now and ((cfg.eval_it and done % cfg.eval_it == 0) or at_end)
                at_ck = (ck_every and done % ck_every == 0) or at_end
                if done % cfg.log_every == 0 or at_eval or at_ck:
                    self._diverged(pending, base, log)
                    vals = torch.stack(pending).tolist()
                    now = time.perf_counter()
                    rec = {
                        "iteration": done,
                        "loss": sum(vals) / len(vals),
                        "loss_last": vals[-1],
                        "lr": float(self.syn_lr.detach()),
                        "sec_per_it": (now - t_last) / len(vals),
                    }
                    t_last = now
                    self.history.append(rec)
                    if log is not None:
                        log.write(rec)
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.4g}", refresh=False
                        )
                        bar.update(done - base)
                    pending, base = [], done
                if at_eval:
                    rec = self._evaluate()
                    self.history.append(rec)
                    if log is not None:
                        log.write(rec)
                    if bar is not None:
                        acc = rec["eval"][cfg.models_to_eval[0]]["mean"]
                        bar.set_postfix(
                            loss=f"{self.history[-2]['loss']:.4f}",
                            lr=f"{rec['lr']:.4g}",
                            acc=f"{100 * acc:.1f}",
                            refresh=True,
                        )
                if at_ck:
                    self._checkpoint()
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
        if self.out is not None:
            atomic_save(self._synthetic(), self.out / SYNTHETIC)
            save_grid(self.images, self.data, self.out / GRID, cfg.ipc)
            if not ckpt.exists():  # iterations == 0
                self._checkpoint()
        return DistillResult(
            images=self.images.detach().cpu().clone(),
            labels=self.labels.cpu().clone(),
            lr=float(self.syn_lr.detach()),
            history=list(self.history),
            best=self.best,
            out=self.out,
            config=cfg,
            iteration=self.it,
            seconds=time.perf_counter() - self.t_start,
        )
