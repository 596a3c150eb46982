"""The distillation loop: a state, a step function and observers.

``run_loop`` steps until ``cfg.iterations``; at log points it reads the pending losses on
the host once and hands a record to the observers; at evaluation points it asks the
periodic evaluator for a record; at checkpoint points the observers write files. Nothing
inside an iteration reads a device value.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mtt_fast.config import Config
from mtt_fast.distillation.observers import Observer, PeriodicEval
from mtt_fast.distillation.state import DistillState
from mtt_fast.distillation.step import Context, step
from mtt_fast.synthetic import SyntheticSet

__all__ = ["Run", "run_loop"]


class Run:
    """What the observers see: the state, the context, the data and the output folder."""

    def __init__(
        self,
        state: DistillState,
        ctx: Context,
        data: Any,
        data_info: dict,
        out: Path | None,
        resumed: bool,
        changed: dict,
    ) -> None:
        self.state, self.ctx, self.data, self.data_info = state, ctx, data, data_info
        self.cfg: Config = ctx.cfg
        self.out, self.resumed, self.changed = out, resumed, changed
        self.emitters: list[Callable[[dict], None]] = []

    def emit(self, record: dict) -> None:
        """Send an event record to the metrics sinks."""
        for e in self.emitters:
            e(record)

    def synthetic(self) -> SyntheticSet:
        st, cfg = self.state, self.cfg
        return SyntheticSet(
            images=st.images.detach().cpu().clone(),
            labels=st.labels.cpu().clone(),
            lr=st.lr,
            dataset=self.data_info.get("name") or cfg.dataset,
            zca=bool(self.data_info.get("zca", False)),
            ipc=cfg.ipc,
            model=cfg.model,
            model_kwargs=dict(cfg.model_kwargs),
            config=cfg.to_dict(),
            dataset_info=dict(self.data_info),
            iteration=st.iteration,
            best=st.best,
        )


def run_loop(run: Run, observers: Sequence[Observer], evaluator: PeriodicEval | None) -> None:
    """Step ``run.state`` to ``cfg.iterations``, calling the observers at their points."""
    cfg, st = run.cfg, run.state
    for o in observers:
        o.on_start(run)
    try:
        pending: list[torch.Tensor] = []
        schedule = None
        t_last = time.perf_counter()
        ck_every = cfg.checkpoint_every
        while st.iteration < cfg.iterations:
            out = step(st, run.ctx)
            pending.append(out.loss)
            done = st.iteration
            at_end = done == cfg.iterations
            at_eval = evaluator is not None and ((cfg.eval_it and done % cfg.eval_it == 0) or at_end)
            at_ck = bool(ck_every and done % ck_every == 0) or at_end
            if done % cfg.log_every == 0 or at_eval or at_ck:
                vals = torch.stack(pending).tolist()  # the one host read of the window
                now = time.perf_counter()
                rec = {
                    "iteration": done,
                    "loss": sum(vals) / len(vals),
                    "loss_last": vals[-1],
                    "lr": st.lr,
                    "sec_per_it": (now - t_last) / len(vals),
                    "losses": vals,
                }
                if out.schedule and out.schedule != schedule:  # what matching chose, when it changes
                    rec["schedule"] = schedule = out.schedule
                t_last = now
                pending = []
                for o in observers:
                    o.on_log(run, rec)
                st.history.append({k: v for k, v in rec.items() if k != "losses"})
            if at_eval:
                erec = evaluator.evaluate(run)
                st.history.append(erec)
                for o in observers:
                    o.on_eval(run, erec)
            if at_ck:
                for o in observers:
                    o.on_checkpoint(run)
    finally:
        for o in observers:
            o.on_close(run)
