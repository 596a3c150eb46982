"""The whole method as library calls: :func:`run` (experts -> distill -> evaluate against
real-image baselines, one report) and :func:`reproduce` (a grid of datasets x IPC with
experts shared across IPCs, a paper-style table, resumable cell by cell).

``mtt-fast run`` and ``mtt-fast reproduce`` are thin wrappers over these.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from mtt_fast import distributed
from mtt_fast._version import __version__
from mtt_fast.config import Config, preset
from mtt_fast.evaluation import BASELINE_LR, CORESET_KINDS
from mtt_fast.evaluation.published import published

__all__ = ["run", "reproduce", "train_store", "format_report", "format_table", "REPORT"]

REPORT = "report.json"
TABLE_JSON = "table.json"
TABLE_MD = "table.md"
EVAL_BATCH = 256  # the evaluation protocol's mini-batch (evaluate_synset)
EVAL_OPTIMIZER = "SGD momentum 0.9, weight decay 5e-4, epochs+1 passes, lr x0.1 after pass epochs//2+1"
_EXPERT_KEYS = (
    "model",
    "model_kwargs",
    "zca",
    "dsa_strategy",
    "buffer_batch",
    "buffer_lr",
    "buffer_momentum",
    "buffer_weight_decay",
    "buffer_lr_decay",
    "seed",
)


def versions() -> dict:
    """Versions and machine of this process, for reports and benchmark results."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "mtt_fast": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
    }


def train_store(cfg: Config, data: Any, out: str | os.PathLike, device, progress: bool):
    """Train (or top up) the experts ``cfg`` asks for into the store ``out``.

    The experts' settings are ``cfg.experts`` (``num_experts``, ``buffer_epochs``,
    ``buffer_batch``, ``buffer_lr`` = 0.01 by default, momentum, weight decay, lr decay) and
    the shared model, DSA and preprocessing;
    they do not depend on the IPC or on ``lr_teacher``.
    """
    from mtt_fast.experts import train_experts

    return train_experts(
        dataset=cfg.dataset,
        model=cfg.model,
        num_experts=cfg.num_experts,
        epochs=cfg.buffer_epochs,
        lr=cfg.expert_lr,
        momentum=cfg.buffer_momentum,
        weight_decay=cfg.buffer_weight_decay,
        lr_decay=cfg.buffer_lr_decay,
        batch_size=cfg.buffer_batch,
        dsa=cfg.dsa is not None,
        dsa_strategy=cfg.dsa_strategy if cfg.dsa is not None else "none",
        zca=cfg.zca,
        out=out,
        device=device,
        seed=cfg.seed,
        progress=progress,
        data=data,
        model_kwargs=cfg.model_kwargs,
        at_once=cfg.experts_at_once,
    )


def _fmt(r: dict | None) -> str:
    if not r:
        return "-"
    return f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f}"


def run(
    dataset: str = "digits",
    ipc: int = 1,
    out: str | os.PathLike | None = None,
    *,
    root: str | os.PathLike | None = None,
    store: Any = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    baselines: Sequence[str] = CORESET_KINDS,
    baseline_lr: float = BASELINE_LR,
    progress: bool = True,
    data: Any = None,
    config: Config | None = None,
    explicit: Iterable[str] | None = None,
    log: Any = print,
    **overrides: Any,
) -> dict:
    """The whole pipeline: experts (or ``store``), distillation, and the final evaluation of
    the distilled set against random and herding real subsets under the same protocol.

    Args:
        dataset: dataset name (default: scikit-learn's digits, offline).
        ipc: images per class.
        out: output folder (default ``runs/<dataset>-ipc<ipc>``): ``buffers/`` (unless
            ``store`` is given), the distillation's files, and ``report.json``.
        root: data folder.
        store: an existing trajectory store (folder or object) instead of training experts.
        device: where everything runs.
        resume: continue an interrupted distillation from ``out/checkpoint.pt``.
        overwrite: replace an earlier run's distillation files in ``out`` (else refused).
        baselines: real-subset baselines to evaluate (``"random"``, ``"herding"``).
        baseline_lr: the baselines' training lr (0.01, the DC / MTT protocol).
        progress: progress bars.
        data: a prepared dataset to reuse.
        config: a ready :class:`~mtt_fast.config.Config` (else the preset).
        explicit: the settings the user gave explicitly (default: the ``overrides``); they
            are never silently replaced by a store's or checkpoint's values.
        log: called with one-line progress messages (``None``: silent).
        **overrides: :class:`~mtt_fast.config.Config` settings by flat name (``iterations``,
            ``num_experts``, ``buffer_epochs``, ``syn_steps``, ``expert_epochs``,
            ``max_start_epoch``, ``lr_img``, ``lr_lr``, ``lr_teacher``, ``batch_syn``,
            ``epoch_eval_train``, ``num_eval``, ``eval_models``, ``model_kwargs``, ...).
            The evaluation architectures are ``eval_models`` (default: the distilled one).

    Returns:
        The report (the content of ``out/report.json``): ``dataset``, ``ipc``, ``model``,
        ``model_kwargs``, ``accuracy`` (``{source: {"mean", "std", "runs"}}``, the final
        set's, from the distillation's evaluation at its last iteration when it made one
        (:func:`final_evaluation`; ``protocol.mtt_models`` says which), and the
        baselines'), ``accuracy_paper_style`` (best mean over the periodic evaluations,
        the paper's way of reporting), ``published`` (the references for this
        setting), ``protocol`` (with the lr of each row), timings, config and versions.
    """
    from mtt_fast.distillation import GRID, distill
    from mtt_fast.experts import TrajectoryStore
    from mtt_fast.utils import atomic_write_json

    say = log or (lambda *_: None)
    t0 = time.perf_counter()
    given = {k: v for k, v in overrides.items() if v is not None}
    explicit = set(given) if explicit is None else set(explicit) | set(given)
    cfg = config.replace(**given) if config is not None else preset(dataset, ipc, **given)
    out = Path(out if out is not None else f"runs/{cfg.dataset}-ipc{cfg.ipc}")
    bad = [k for k in baselines if k not in CORESET_KINDS]
    if bad:
        raise ValueError(f"unknown baseline(s) {bad}; known: {', '.join(CORESET_KINDS)}")
    # under torchrun: every process trains experts (claims) and shares the distillation;
    # rank 0 alone evaluates, logs and writes the report (the others return {})
    device = distributed.setup(device)
    main_rank = distributed.is_main()
    say = say if main_rank else (lambda *_: None)
    progress = progress and main_rank
    timings: dict[str, float] = {}

    t = time.perf_counter()
    if data is None:
        from mtt_fast.data import prepare

        data = prepare(cfg.dataset, root=root, zca=cfg.zca, device=device)
    timings["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if store is not None:
        store = store if isinstance(store, TrajectoryStore) else TrajectoryStore.open(store)
    else:
        say(f"[1/3] training {cfg.num_experts} experts -> {out / 'buffers'}")
        store = train_store(cfg, data, out / "buffers", device, progress)
    timings["experts_s"] = time.perf_counter() - t

    say(f"[2/3] distilling {cfg.dataset} at ipc {cfg.ipc} ({cfg.iterations} iterations)")
    t = time.perf_counter()
    res = distill(
        dataset=cfg.dataset,
        store=store,
        ipc=cfg.ipc,
        preset=cfg,
        out=out,
        resume=resume,
        overwrite=overwrite,
        device=device,
        progress=progress,
        data=data,
        explicit=explicit,
    )
    timings["distill_s"] = time.perf_counter() - t
    if not main_rank:
        return {}
    cfg = res.config
    models = cfg.models_to_eval
    num_eval = max(1, cfg.num_eval)
    say(f"[3/3] evaluating mtt vs {', '.join(baselines) or 'nothing'} on {', '.join(models)}")
    t = time.perf_counter()
    last = final_evaluation(res, models, num_eval)
    results = _evaluate_all(res, last, data, models, num_eval, baselines, baseline_lr, device, progress)
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    report = build_report(cfg, models, results, res, store, num_eval, baseline_lr, baselines)
    report["protocol"]["mtt_models"] = (
        "the distillation's evaluation at its last iteration (seeds seed * 1000003 + iteration)"
        if last is not None
        else "a fresh evaluation after the distillation (seeds from seed)"
    )
    report.update(
        timings={k: round(v, 3) for k, v in timings.items()},
        grid=str(out / GRID),
        synthetic=str(out / "synthetic.pt"),
        device=str(device),
        threads=torch.get_num_threads(),
    )
    atomic_write_json(report, out / REPORT)
    for line in format_report(report).splitlines():
        say(line)
    say(f"wrote {out / REPORT} in {timings['total_s']:.1f} s")
    return report


def final_evaluation(res: Any, models: Sequence[str], num_eval: int) -> dict | None:
    """The distillation's periodic evaluation of the final set, if it made one under the
    final evaluation's protocol (the loop always evaluates at its last iteration): the
    record ``{"iteration", "lr", "eval": {model: {"mean", "std", "runs"}}}``, else None.

    Reusing it halves the cost of a cell's evaluation of the distilled set (at IPC 10 on a
    CPU, five 1000-epoch models: about half an hour). The only difference from a fresh
    evaluation is the models' seeds (the loop's ``seed * 1000003 + iteration`` instead of
    ``seed``): the same protocol, models, epochs, lr and set.
    """
    last = next((h for h in reversed(res.history) if "eval" in h), None)
    if last is None or last["iteration"] != res.iteration or last.get("lr") != res.lr:
        return None
    if not all(m in last["eval"] and len(last["eval"][m].get("runs", ())) == num_eval for m in models):
        return None
    return last


def _evaluate_all(res, last, data, models, num_eval, baselines, baseline_lr, device, progress) -> dict:
    """The distilled set and the real-subset baselines, each on ``num_eval`` fresh models of
    every evaluated architecture (the distilled set at its learned lr, baselines at
    ``baseline_lr``): ``{source: {model: {"mean", "std", "runs", ...}}}``. The distilled
    set's results are ``last`` (the loop's evaluation at its last iteration, from
    :func:`final_evaluation`) when given, else a fresh evaluation."""
    from mtt_fast.evaluation import evaluate, evaluate_baselines

    cfg = res.config
    mk = {m: (dict(cfg.model_kwargs) if m == cfg.model else {}) for m in models}
    common = dict(
        dsa_strategy=cfg.dsa, seed=cfg.seed, device=device, progress=progress, model_kwargs=mk
    )
    if last is not None:  # the loop's last periodic evaluation is of this very set
        results = {"mtt": {m: dict(r) for m, r in last["eval"].items()}}
    else:
        rep = evaluate(
            res.images, res.labels, res.lr, data, models, num_eval, cfg.epoch_eval_train, **common
        )
        results = dict(rep.results)
    if baselines:
        results.update(
            evaluate_baselines(
                data,
                cfg.ipc,
                lr=baseline_lr,
                kinds=tuple(baselines),
                models=models,
                num_eval=num_eval,
                epochs=cfg.epoch_eval_train,
                herding_model=None,
                **common,
            )
        )
    return results


def build_report(cfg, models, results, res, store, num_eval, baseline_lr, baselines) -> dict:
    """report.json's content (see :func:`run`)."""
    head = models[0]
    pick = ("mean", "std", "runs")
    accuracy = {src: {k: per[head][k] for k in pick} for src, per in results.items()}
    per_model = {m: {src: {k: per[m][k] for k in pick} for src, per in results.items()} for m in models}
    paper_style = None
    if res.best is not None:
        paper_style = dict(res.best)
        paper_style["note"] = (
            "the paper's way of reporting (best mean over the periodic evaluations during "
            "distillation; see the original code's issue #23): selected on the test set, so "
            "optimistic. The headline is accuracy.mtt, the final synthetic set."
        )
    refs = published(cfg.dataset, cfg.ipc)
    gap = {
        src: round(accuracy[src]["mean"] - refs[src]["mean"], 6)
        for src in accuracy
        if src in refs
    }
    return {
        "dataset": cfg.dataset,
        "ipc": cfg.ipc,
        "model": cfg.model,
        "model_kwargs": dict(cfg.model_kwargs),
        "accuracy": accuracy,
        "accuracy_paper_style": paper_style,
        "best_during_distillation": paper_style,  # the earlier name of the same figure
        "published": refs,
        "gap_to_published": gap,
        "per_model": per_model,
        "learned_lr": res.lr,
        "protocol": {
            "models": list(models),
            "num_eval": num_eval,
            "epochs": cfg.epoch_eval_train,
            "dsa_strategy": cfg.dsa,
            "batch_size": EVAL_BATCH,
            "optimizer": EVAL_OPTIMIZER,
            "lr": {"mtt": res.lr, **{k: baseline_lr for k in baselines}},
            "lr_source": {
                "mtt": "learned during distillation",
                **{k: "fixed (DC / MTT protocol)" for k in baselines},
            },
            "seed": cfg.seed,
        },
        "iterations": res.iteration,
        "store": str(store.path),
        "num_experts": store.num_experts,
        "expert_epochs_stored": store.epochs,
        "config": cfg.to_dict(),
        "versions": versions(),
    }


def format_report(report: dict) -> str:
    """The printed table of a report: each set's accuracy beside the published one."""
    refs = report.get("published") or {}
    lines = [f"{'set':<10s} {'this run (%)':<18s} published (%)"]
    for src, r in report["accuracy"].items():
        ref = refs.get(src)
        ref_s = f"{_fmt(ref)} ({ref['source']})" if ref else "-"
        lines.append(f"{src:<10s} {_fmt(r):<18s} {ref_s}")
    ps = report.get("accuracy_paper_style")
    if ps:
        lines.append(
            f"{'mtt best':<10s} {_fmt(ps):<18s} (paper-style: best periodic evaluation, at "
            f"iteration {ps['iteration']}; optimistic)"
        )
    if not refs:
        lines.append("(no published reference for this dataset / IPC: not comparable)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- reproduce


def _parse_ipcs(ipcs: Sequence[int] | str | int) -> list[int]:
    if isinstance(ipcs, int):
        return [ipcs]
    if isinstance(ipcs, str):
        try:
            ipcs = [int(s) for s in ipcs.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"ipc list must be comma-separated ints, got {ipcs!r}") from None
    out = [int(i) for i in ipcs]
    if not out or any(i < 1 for i in out):
        raise ValueError(f"need at least one ipc >= 1, got {out}")
    return sorted(set(out))


def _expert_groups(cfgs: dict[int, Config], explicit: set[str]) -> list[dict]:
    """Cells whose experts can be the same store: same model, preprocessing, DSA and expert
    SGD settings. A store serves every cell of its group, so it gets the most experts and
    epochs any of them asks for; an explicit ``buffer_epochs`` too short for a cell stops."""
    groups: dict[tuple, list[int]] = {}
    for ipc, c in cfgs.items():
        key = tuple(repr(getattr(c, k)) for k in _EXPERT_KEYS)
        groups.setdefault(key, []).append(ipc)
    out = []
    for ipcs in groups.values():
        need = max(cfgs[i].min_epochs for i in ipcs)
        epochs = max(cfgs[i].buffer_epochs for i in ipcs)
        if "buffer_epochs" in explicit and epochs < need:
            worst = max(ipcs, key=lambda i: cfgs[i].min_epochs)
            raise ValueError(
                f"buffer_epochs={epochs} was asked, but ipc {worst} needs experts of at least "
                f"{need} epochs (max_start_epoch={cfgs[worst].max_start_epoch}, "
                f"expert_epochs={cfgs[worst].expert_epochs})"
            )
        epochs = max(epochs, need)
        num = max(cfgs[i].num_experts for i in ipcs)
        out.append({"ipcs": ipcs, "buffer_epochs": epochs, "num_experts": num})
    return out


def format_table(rows: list[dict]) -> str:
    """A paper-style markdown table of :func:`reproduce` rows."""
    head = (
        "| dataset | IPC | model | MTT (final set) | MTT (paper-style best) | random | herding "
        "| published MTT | published random / herding |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    body = []
    for r in rows:
        acc, refs = r["accuracy"], r.get("published") or {}
        width = r.get("model_kwargs") or {}
        model = r["model"] + (f" {width}" if width else "")

        def ref(m: str, refs=refs) -> str:
            return f"{_fmt(refs[m])} ({refs[m]['source']})" if m in refs else "-"

        body.append(
            f"| {r['dataset']} | {r['ipc']} | {model} | {_fmt(acc.get('mtt'))} | "
            f"{_fmt(r.get('accuracy_paper_style'))} | {_fmt(acc.get('random'))} | "
            f"{_fmt(acc.get('herding'))} | {ref('mtt')} | {ref('random')} / {ref('herding')} |"
        )
    return head + "\n".join(body) + "\n"


def reproduce(
    datasets: Sequence[str] | str = ("mnist",),
    ipcs: Sequence[int] | str | int = (1, 10),
    out: str | os.PathLike = "runs/reproduce",
    *,
    root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Any = print,
    command: str | None = None,
    baselines: Sequence[str] = CORESET_KINDS,
    **overrides: Any,
) -> dict:
    """Run the paper's protocol over a grid of datasets x IPC and write a paper-style table.

    Every cell is :func:`run` into ``out/<dataset>/ipc<N>/`` with the preset of
    ``(dataset, N)`` and ``overrides``; experts are trained once per dataset (per group of
    cells with the same expert settings, e.g. ZCA or not) into
    ``out/<dataset>/buffers[-zca]/`` and shared by its cells. Resumable cell by cell: a cell
    with a report is kept, an interrupted one resumes its distillation, an interrupted
    expert run resumes its store. After every cell ``out/table.json`` and ``out/table.md``
    are rewritten (atomically).

    Args:
        datasets: dataset names (a list or comma-separated string).
        ipcs: images per class (a list or comma-separated string, e.g. ``"1,10"``).
        out: output folder.
        root, device, progress, log: as :func:`run`.
        command: the command line to record in the table (default: none).
        baselines: real-subset baselines of every cell.
        **overrides: :class:`~mtt_fast.presets.Config` fields for every cell.

    Returns:
        ``{"rows": [report, ...], "command", "versions", ...}`` (the content of table.json).
    """
    from mtt_fast.data import prepare
    from mtt_fast.utils import atomic_write_json, atomic_write_text, read_json

    if isinstance(datasets, str):
        datasets = [d.strip() for d in datasets.split(",") if d.strip()]
    ipc_list = _parse_ipcs(ipcs)
    out = Path(out)
    say = log or (lambda *_: None)
    explicit = {k for k, v in overrides.items() if v is not None}
    device = torch.device(device)
    rows: list[dict] = []
    t0 = time.perf_counter()

    def write() -> dict:
        if not distributed.is_main():
            return {}
        table = {
            "rows": rows,
            "command": command,
            "versions": versions(),
            "threads": torch.get_num_threads(),
            "device": str(device),
            "note": (
                "accuracy.mtt is the final synthetic set (headline); accuracy_paper_style is "
                "the best periodic evaluation (the paper's way, optimistic); published holds "
                "the paper's Table 1 or, for MNIST / Fashion-MNIST, reruns by later work. "
                "Datasets without a published row (e.g. the CIFAR-10 slice) are not comparable."
            ),
        }
        atomic_write_json(table, out / TABLE_JSON)
        atomic_write_text(format_table(rows), out / TABLE_MD)
        return table

    table: dict = {}
    for ds in datasets:
        cfgs = {i: preset(ds, i, **overrides) for i in ipc_list}
        for grp in _expert_groups(cfgs, explicit):
            first = cfgs[grp["ipcs"][0]]
            data = prepare(first.dataset, root=root, zca=first.zca, device=device)
            store_dir = out / ds / ("buffers-zca" if first.zca else "buffers")
            expert_cfg = first.replace(
                buffer_epochs=grp["buffer_epochs"], num_experts=grp["num_experts"]
            )
            say(f"{ds}: experts for ipc {grp['ipcs']} -> {store_dir}")
            t = time.perf_counter()
            store = train_store(expert_cfg, data, store_dir, device, progress)
            say(f"{ds}: {store.num_experts} experts ready ({time.perf_counter() - t:.0f} s)")
            for ipc in grp["ipcs"]:
                cell = out / ds / f"ipc{ipc}"
                if (cell / REPORT).exists():
                    say(f"{ds} ipc {ipc}: done before, kept ({cell / REPORT})")
                    rows.append(read_json(cell / REPORT))
                else:
                    row = run(
                        out=cell,
                        store=store,
                        device=device,
                        resume=(cell / "checkpoint.pt").exists(),
                        progress=progress,
                        data=data,
                        config=cfgs[ipc],
                        explicit=explicit,
                        baselines=baselines,
                        log=log,
                    )
                    if not distributed.is_main():  # under torchrun rank 0 writes the table
                        continue
                    rows.append(row)
                rows.sort(key=lambda r: (str(r["dataset"]), int(r["ipc"])))
                table = write()
    say(f"wrote {out / TABLE_MD} and {out / TABLE_JSON} in {time.perf_counter() - t0:.0f} s")
    return table
