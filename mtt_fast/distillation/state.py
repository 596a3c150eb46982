"""The state of a distillation run: everything that changes from one iteration to the next,
in one object that round-trips to a checkpoint file."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtt_fast._version import __version__
from mtt_fast.config import Config
from mtt_fast.utils import load_torch_file, rng_state, set_rng_state, to_jsonable

__all__ = ["DistillState", "init_synthetic", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "mtt-fast-distill-checkpoint"
_CKPT_VERSION = 1


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


@dataclass
class DistillState:
    """Images, lr, their optimizers, generators and bookkeeping of one run.

    One CPU generator, ``host``, draws the initial images, the expert order and the start
    epochs; each trajectory's mini-batches and DSA draws come from a generator seeded by
    (seed, iteration, trajectory) (:func:`mtt_fast.distillation.step.plan_seed`). A resumed
    run is therefore bit-identical to an uninterrupted one. (Checkpoints of mtt-fast
    0.1 also hold a ``match`` generator, which is ignored.)
    """

    images: torch.Tensor
    labels: torch.Tensor
    syn_lr: torch.Tensor
    opt_img: torch.optim.Optimizer
    opt_lr: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    iteration: int = 0
    order: list[int] = field(default_factory=list)
    best: dict | None = None
    history: list[dict] = field(default_factory=list)
    loss0: float | None = None  # mean loss of the first logged window (explosion check)

    @property
    def lr(self) -> float:
        """The learned lr (one host read)."""
        return float(self.syn_lr.detach())

    @staticmethod
    def _optimizers(images, syn_lr, cfg: Config):
        return (
            torch.optim.SGD([images], lr=cfg.lr_img, momentum=0.5),
            torch.optim.SGD([syn_lr], lr=cfg.lr_lr, momentum=0.5),
        )

    @staticmethod
    def _generators(seed: int) -> dict[str, torch.Generator]:
        return {"host": torch.Generator().manual_seed(seed)}

    @classmethod
    def fresh(cls, cfg: Config, data: Any, device: torch.device) -> DistillState:
        gens = cls._generators(cfg.seed)
        images, labels = init_synthetic(data, cfg.ipc, cfg.init, gens["host"])
        images = images.to(device).requires_grad_(True)
        syn_lr = torch.tensor(cfg.lr_teacher, device=device).requires_grad_(True)
        opt_img, opt_lr = cls._optimizers(images, syn_lr, cfg)
        return cls(images, labels.to(device), syn_lr, opt_img, opt_lr, gens)

    # ------------------------------------------------------------------ checkpoint
    def to_checkpoint(self, cfg: Config, store_path: str, data_info: dict) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": _CKPT_VERSION,
            "version": __version__,
            "iteration": self.iteration,
            "images": self.images.detach().cpu().clone(),
            "labels": self.labels.cpu().clone(),
            "syn_lr": self.syn_lr.detach().cpu().clone(),
            "opt_img": self.opt_img.state_dict(),
            "opt_lr": self.opt_lr.state_dict(),
            "rng": rng_state(self.generators),
            "expert_order": list(self.order),
            "best": self.best,
            "history": to_jsonable(self.history),
            "loss0": self.loss0,
            "config": cfg.to_dict(),
            "store": str(store_path),
            "dataset": data_info,
        }

    @staticmethod
    def read_checkpoint(path: Path) -> dict:
        """The checkpoint's dict (``weights_only=True``), or a one-line ``ValueError``."""
        ck = load_torch_file(path, "mtt-fast distillation checkpoint")
        if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{path} is not what was expected (expected: mtt-fast distillation checkpoint)"
            )
        return ck

    @classmethod
    def from_checkpoint(
        cls, ck: dict, cfg: Config, device: torch.device, want_shape: tuple, where: Path
    ) -> DistillState:
        """Rebuild the state; ``cfg`` is the reconciled configuration (its ``lr_img`` /
        ``lr_lr`` may differ from the checkpoint's on purpose: the optimizers take them)."""
        if tuple(ck["images"].shape) != tuple(want_shape):
            raise ValueError(
                f"checkpoint {where} holds images {tuple(ck['images'].shape)}, the run needs "
                f"{tuple(want_shape)}"
            )
        images = ck["images"].to(device).requires_grad_(True)
        syn_lr = ck["syn_lr"].to(device).requires_grad_(True)
        opt_img, opt_lr = cls._optimizers(images, syn_lr, cfg)
        opt_img.load_state_dict(ck["opt_img"])
        opt_lr.load_state_dict(ck["opt_lr"])
        for opt, lr in ((opt_img, cfg.lr_img), (opt_lr, cfg.lr_lr)):
            for g in opt.param_groups:  # an explicit change on resume wins
                g["lr"] = lr
        gens = cls._generators(cfg.seed)
        set_rng_state(ck["rng"], gens)
        loss0 = ck.get("loss0")
        return cls(
            images,
            ck["labels"].to(device),
            syn_lr,
            opt_img,
            opt_lr,
            gens,
            iteration=int(ck["iteration"]),
            order=[int(i) for i in ck["expert_order"]],
            best=ck["best"],
            history=list(ck["history"]),
            loss0=float(loss0) if loss0 is not None and math.isfinite(loss0) else None,
        )
