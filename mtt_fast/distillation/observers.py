"""Small observers of the distillation loop: each does one thing at the loop's points.

The loop (:func:`mtt_fast.distillation.loop.run_loop`) calls, in the order the observers are
given: ``on_start(run)`` once, ``on_log(run, record)`` at every log point (after the
losses were read on the host), ``on_eval(run, record)`` after a periodic evaluation,
``on_checkpoint(run)`` at checkpoint points, and ``on_close(run)`` at the end, also when
the loop stops with an error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mtt_fast.utils import MetricsWriter, atomic_save, atomic_write_text, to_jsonable

__all__ = [
    "Observer",
    "DistillDiverged",
    "DivergenceGuard",
    "MetricsLog",
    "ProgressBar",
    "PeriodicEval",
    "Checkpointer",
    "CHECKPOINT",
    "SYNTHETIC",
    "SYNTHETIC_BEST",
    "METRICS",
    "GRID",
]

CHECKPOINT = "checkpoint.pt"
SYNTHETIC = "synthetic.pt"
SYNTHETIC_BEST = "synthetic_best.pt"
GRID = "synthetic.png"
METRICS = "metrics.jsonl"

# a run "explodes" when the loss grows this much over its first logged value, or the images
# this much over their initial magnitude: it stops before such a state is checkpointed
LOSS_EXPLOSION = 100.0
IMAGE_EXPLOSION = 100.0


class Observer:
    """Base class: every hook does nothing."""

    def on_start(self, run: Any) -> None: ...
    def on_log(self, run: Any, record: dict) -> None: ...
    def on_eval(self, run: Any, record: dict) -> None: ...
    def on_checkpoint(self, run: Any) -> None: ...
    def on_close(self, run: Any) -> None: ...


class DistillDiverged(RuntimeError):
    """The loss or the images became non-finite or exploded, or the learned lr left
    ``(0, inf)``.

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


class DivergenceGuard(Observer):
    """Stops the run (:class:`DistillDiverged`) at the first log point where the loss is
    non-finite or ``LOSS_EXPLOSION`` x its first logged value, the lr left ``(0, inf)``, or
    the images are non-finite or ``IMAGE_EXPLOSION`` x their initial magnitude. It runs
    before the other observers, so a bad state is never logged as good nor checkpointed."""

    def on_start(self, run: Any) -> None:
        self.scale0 = max(1.0, float(run.state.images.detach().abs().amax()))

    def on_log(self, run: Any, record: dict) -> None:
        st = run.state
        vals = record["losses"]
        lr = record["lr"]
        if st.loss0 is None and vals and all(math.isfinite(v) for v in vals):
            st.loss0 = sum(vals) / len(vals)
        bad = next((i for i, v in enumerate(vals) if not math.isfinite(v)), None)
        scale = float(st.images.detach().abs().amax())
        why = hint = None
        it = record["iteration"]
        if bad is not None:
            it = record["iteration"] - len(vals) + bad + 1
            why, hint = f"the matching loss became {vals[bad]} at iteration {it}", "lower lr_img / lr_lr or lr_teacher"
        elif not (math.isfinite(lr) and lr > 0):
            why, hint = f"the learned lr became {lr:g} (must stay > 0) by iteration {it}", "lower lr_lr"
        elif not math.isfinite(scale):
            why, hint = f"the synthetic images became non-finite by iteration {it}", "lower lr_img / lr_lr"
        elif scale > IMAGE_EXPLOSION * self.scale0:
            why = (
                f"the synthetic images exploded to magnitude {scale:.3g} (from "
                f"{self.scale0:.3g}) by iteration {it}"
            )
            hint = "lower lr_img"
        elif st.loss0 is not None and max(vals, default=0.0) > LOSS_EXPLOSION * st.loss0:
            why = (
                f"the matching loss exploded to {max(vals):.3g} (first logged "
                f"{st.loss0:.3g}) by iteration {it}"
            )
            hint = "lower lr_img / lr_lr"
        if why is None:
            return
        loss = vals[bad] if bad is not None else (vals[-1] if vals else float("nan"))
        ck = run.out / CHECKPOINT if run.out is not None else None
        ck = ck if ck is not None and ck.exists() else None
        kept = (
            f"; the last good checkpoint is kept at {ck}: resume it with --resume and a lower "
            f"--lr-img / --lr-lr"
            if ck
            else ""
        )
        msg = f"distillation diverged: {why} ({hint}){kept}"
        run.emit({"iteration": it, "event": "diverged", "loss": loss, "lr": lr, "message": msg})
        raise DistillDiverged(msg, it, loss, lr, ck)


class MetricsLog(Observer):
    """``out/metrics.jsonl``: one JSON line per log point, evaluation and event."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / METRICS
        self.writer: MetricsWriter | None = None

    def on_start(self, run: Any) -> None:
        if run.resumed:  # drop records written after the checkpoint by the killed run
            text = "".join(json.dumps(to_jsonable(r)) + "\n" for r in run.state.history)
            atomic_write_text(text, self.path)
        self.writer = MetricsWriter(self.path, truncate=not run.resumed)
        run.emitters.append(self.writer.write)
        if not run.resumed:
            self.writer.write({"event": "start", "config": run.cfg.to_dict(), "store": str(run.ctx.store.path)})
        elif run.changed:
            self.writer.write(
                {
                    "iteration": run.state.iteration,
                    "event": "resumed with changed settings",
                    "changed": {k: {"checkpoint": a, "now": b} for k, (a, b) in run.changed.items()},
                }
            )

    def on_log(self, run: Any, record: dict) -> None:
        self.writer.write(_public(record))

    def on_eval(self, run: Any, record: dict) -> None:
        self.writer.write(record)

    def on_close(self, run: Any) -> None:
        if self.writer is not None:
            self.writer.close()


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "losses"}


class ProgressBar(Observer):
    """A tqdm bar with the loss, lr and latest accuracy."""

    def on_start(self, run: Any) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=run.cfg.iterations, initial=run.state.iteration, desc="distill", unit="it")
        self.shown = run.state.iteration
        self.loss = float("nan")

    def on_log(self, run: Any, record: dict) -> None:
        self.loss = record["loss"]
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.4g}", refresh=False)
        self.bar.update(record["iteration"] - self.shown)
        self.shown = record["iteration"]

    def on_eval(self, run: Any, record: dict) -> None:
        acc = record["eval"][run.cfg.models_to_eval[0]]["mean"]
        self.bar.set_postfix(loss=f"{self.loss:.4f}", lr=f"{record['lr']:.4g}", acc=f"{100 * acc:.1f}")

    def on_close(self, run: Any) -> None:
        self.bar.close()


class PeriodicEval(Observer):
    """Evaluates the current set by the paper's protocol at evaluation points (under a
    forked RNG with seeds of its own, so the synthetic set does not depend on how often it
    is evaluated) and keeps the best one (``synthetic_best.pt``)."""

    def __init__(self, evaluate_fn: Any) -> None:
        self.evaluate_fn = evaluate_fn

    def evaluate(self, run: Any) -> dict:
        cfg, st = run.cfg, run.state
        models = cfg.models_to_eval
        lr = st.lr
        dev = run.ctx.device
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            rep = self.evaluate_fn(
                st.images.detach(),
                st.labels,
                lr,
                run.data,
                models,
                cfg.num_eval,
                cfg.epoch_eval_train,
                dsa_strategy=cfg.dsa,
                seed=cfg.seed * 1_000_003 + st.iteration,
                device=dev,
                progress=False,
                model_kwargs={m: (dict(cfg.model_kwargs) if m == cfg.model else {}) for m in models},
                source="mtt",
            )
        res = rep.results["mtt"]
        rec = {
            "iteration": st.iteration,
            "lr": lr,
            "eval": {m: {"mean": r["mean"], "std": r["std"], "runs": r["runs"]} for m, r in res.items()},
        }
        head = res[models[0]]
        if st.best is None or head["mean"] > st.best["mean"]:
            st.best = {
                "iteration": st.iteration,
                "model": models[0],
                "mean": head["mean"],
                "std": head["std"],
                "lr": lr,
            }
            if run.out is not None:
                run.synthetic().save(run.out / SYNTHETIC_BEST)
        return rec


class Checkpointer(Observer):
    """Writes the whole state atomically to ``out/checkpoint.pt`` at checkpoint points."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / CHECKPOINT

    def on_checkpoint(self, run: Any) -> None:
        atomic_save(run.state.to_checkpoint(run.cfg, str(run.ctx.store.path), run.data_info), self.path)
