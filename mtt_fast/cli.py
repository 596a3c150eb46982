"""The ``mtt-fast`` command: ``info | buffer | import-buffers | distill | eval | run``.

``mtt-fast run`` with no arguments distils scikit-learn's digits (offline) at 1 image per
class end to end: a few experts, a few hundred iterations, and the evaluation of the
distilled set against random and herding real subsets under the same protocol, written to
``runs/digits-ipc1/report.json``.

Bad input (a missing store, an unknown dataset, a bad value) prints one line
``mtt-fast: error: ...`` to stderr and exits with status 2; a diverged distillation exits
with status 3.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mtt_fast._version import __version__

__all__ = ["main", "build_parser", "run_pipeline"]

EXIT_USAGE = 2
EXIT_DIVERGED = 3

# (channels, num_classes, im_size) of the named datasets, for import-buffers
_SHAPES = {
    "mnist": (1, 10, 28),
    "fashionmnist": (1, 10, 28),
    "cifar10": (3, 10, 32),
    "cifar10-subset": (3, 10, 32),
    "cifar100": (3, 100, 32),
    "svhn": (3, 10, 32),
    "tinyimagenet": (3, 200, 64),
    "digits": (1, 10, 8),
}


class _Fail(Exception):
    """A user error reported as one line and exit status 2."""


def _print(*a: Any) -> None:
    print(*a, flush=True)


# ---------------------------------------------------------------------------- options


def _add_data(p: argparse.ArgumentParser, default_dataset: str | None = "digits") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=default_dataset, help="dataset name (default: %(default)s)")
    g.add_argument(
        "--data-path", "--root", dest="root", default=None, help="data folder (e.g. ../shared/data)"
    )
    g.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    g.add_argument("--seed", type=int, default=None, help="seed of every generator (default 0)")


def _add_config(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distillation settings (default: the preset for dataset and ipc)")
    g.add_argument("--ipc", type=int, default=1, help="images per class (default 1)")
    g.add_argument(
        "--preset",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from the paper's / our preset for (dataset, ipc) (default on)",
    )
    g.add_argument("--iterations", type=int)
    g.add_argument("--syn-steps", type=int)
    g.add_argument("--expert-epochs", type=int, help="M: expert epochs matched per iteration")
    g.add_argument("--max-start-epoch", type=int)
    g.add_argument("--lr-img", type=float)
    g.add_argument("--lr-lr", type=float)
    g.add_argument("--lr-teacher", type=float, help="initial student lr (and expert lr)")
    g.add_argument("--batch-syn", type=_int_or_all, help="int or 'all'")
    g.add_argument("--zca", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--model", help="architecture (default: preset's / the store's)")
    g.add_argument("--width", type=int, help="ConvNet width override")
    g.add_argument("--depth", type=int, help="ConvNet depth override")
    g.add_argument("--init", choices=("real", "noise"))
    g.add_argument("--dsa-strategy", help="DSA groups joined by _ ('none' disables)")
    g.add_argument("--matching", choices=("unroll", "checkpoint"))
    g.add_argument("--segment", type=_int_or_auto, help="checkpoint segment: N or 'auto'")
    g.add_argument("--store-on", choices=("device", "host"),
                   help="where checkpoint mode keeps the per-step parameter vectors")
    g.add_argument("--eval-it", type=int, help="evaluate / checkpoint every N iterations")
    g.add_argument("--num-eval", type=int, help="models per evaluation")
    g.add_argument("--eval-epochs", type=int, help="training epochs per evaluation model")
    g.add_argument("--log-every", type=int)


def _add_experts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("experts")
    g.add_argument("--num-experts", type=int)
    g.add_argument("--expert-epochs-train", type=int, help="epochs per expert")
    g.add_argument("--expert-batch", type=int, help="experts' mini-batch")
    g.add_argument("--expert-lr", type=float, help="experts' lr (default: lr_teacher)")


def _int_or_all(s: str) -> int | str:
    if s.lower() in ("all", "none"):
        return "all"
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'all', got {s!r}") from None


def _int_or_auto(s: str) -> int | str:
    if s.lower() == "auto":
        return "auto"
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'auto', got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mtt-fast``."""
    ap = argparse.ArgumentParser(
        prog="mtt-fast",
        description="Dataset distillation by Matching Training Trajectories (MTT).",
    )
    ap.add_argument("--version", action="version", version=f"mtt-fast {__version__}")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 for digits on the CPU, whose tiny kernels only "
        "lose to thread synchronisation; else torch's default)",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("info", help="versions, devices, compiled ops and kernel backends")
    p = sub.add_parser("build-ops", help="compile the C++/CUDA ops for this machine now")
    p.add_argument("--strict", action="store_true", help="fail instead of leaving CUDA out")
    p.add_argument("--quiet", action="store_true", help="no compiler command lines")

    p = sub.add_parser("buffer", help="train expert trajectories into a store")
    _add_data(p)
    _add_config(p)
    _add_experts(p)
    p.add_argument("--out", help="store folder (default: buffers/<dataset>)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("import-buffers", help="convert the original replay_buffer_N.pt files")
    p.add_argument("files", nargs="+", help="replay_buffer_*.pt files or their folder")
    p.add_argument("--out", required=True, help="store folder to create")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", default="ConvNet")
    p.add_argument("--width", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--zca", action="store_true", help="the experts saw ZCA-whitened data")
    p.add_argument("--channels", type=int)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--im-size", type=int)
    p.add_argument("--append", action="store_true")
    p.add_argument("--data-path", "--root", dest="root", default=None)

    p = sub.add_parser("distill", help="distill a dataset from a trajectory store")
    _add_data(p, default_dataset=None)
    _add_config(p)
    p.add_argument("--store", required=True, help="trajectory store folder (from `buffer`)")
    p.add_argument("--out", help="output folder (default: runs/<dataset>-ipc<ipc>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("eval", help="evaluate a synthetic.pt")
    p.add_argument("synthetic", help="a synthetic.pt written by distill")
    p.add_argument("--models", default=None, help="comma-separated (default: the distill model)")
    p.add_argument("--num-eval", type=int, default=5)
    p.add_argument("--eval-epochs", type=int, default=1000)
    p.add_argument("--baselines", default="", help="also evaluate e.g. random,herding")
    p.add_argument("--baseline-lr", type=float, default=None)
    p.add_argument("--data-path", "--root", dest="root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("run", help="experts + distillation + evaluation vs real subsets")
    _add_data(p)
    _add_config(p)
    _add_experts(p)
    p.add_argument("--out", help="output folder (default: runs/<dataset>-ipc<ipc>)")
    p.add_argument("--store", help="use this trajectory store instead of training experts")
    p.add_argument("--resume", action="store_true", help="continue an interrupted distillation")
    p.add_argument("--models", default=None, help="final evaluation models, comma-separated")
    p.add_argument(
        "--baselines",
        default="random,herding",
        help="real subsets to compare (default %(default)s)",
    )
    p.add_argument("--baseline-lr", type=float, default=None, help="default: lr_teacher")
    p.add_argument("--no-progress", action="store_true")
    return ap


# ---------------------------------------------------------------------------- helpers


def _overrides(a: argparse.Namespace) -> dict:
    kw: dict[str, Any] = {
        "iterations": a.iterations,
        "syn_steps": a.syn_steps,
        "expert_epochs": a.expert_epochs,
        "max_start_epoch": a.max_start_epoch,
        "lr_img": a.lr_img,
        "lr_lr": a.lr_lr,
        "lr_teacher": a.lr_teacher,
        "zca": a.zca,
        "model": a.model,
        "init": a.init,
        "dsa_strategy": a.dsa_strategy,
        "matching": a.matching,
        "segment": a.segment,
        "store_on": a.store_on,
        "eval_it": a.eval_it,
        "num_eval": a.num_eval,
        "epoch_eval_train": a.eval_epochs,
        "log_every": a.log_every,
        "seed": a.seed,
    }
    if a.batch_syn is not None:
        kw["batch_syn"] = None if a.batch_syn == "all" else a.batch_syn
    for k in ("num_experts", "expert_epochs_train", "expert_batch", "expert_lr"):
        if hasattr(a, k):
            kw[
                {
                    "num_experts": "num_experts",
                    "expert_epochs_train": "buffer_epochs",
                    "expert_batch": "buffer_batch",
                    "expert_lr": "buffer_lr",
                }[k]
            ] = getattr(a, k)
    return kw


def _config(a: argparse.Namespace, dataset: str):
    from mtt_fast.presets import DistillConfig, preset

    kw = _overrides(a)
    if "batch_syn" in kw and kw["batch_syn"] is None:
        del kw["batch_syn"]
        all_batch = True
    else:
        all_batch = False
    cfg = preset(dataset, a.ipc, **kw) if a.preset else DistillConfig(dataset=dataset, ipc=a.ipc)
    if not a.preset:
        cfg = cfg.replace(**{k: v for k, v in kw.items() if v is not None})
    if all_batch:
        cfg = cfg.replace(batch_syn=None)
    mk = dict(cfg.model_kwargs)
    if a.model is not None and a.model != "ConvNet" and a.width is None and a.depth is None:
        mk = {}  # a preset's ConvNet options do not carry over to another model
    if a.width is not None:
        mk["width"] = a.width
    if a.depth is not None:
        mk["depth"] = a.depth
    if mk != cfg.model_kwargs:
        cfg = cfg.replace(model_kwargs=mk)
    return cfg


def _models_arg(s: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if not s:
        return default
    out = tuple(m.strip() for m in s.split(",") if m.strip())
    from mtt_fast.models import MODEL_NAMES

    bad = [m for m in out if m not in MODEL_NAMES]
    if bad:
        raise _Fail(f"unknown model(s) {bad}; known: {', '.join(MODEL_NAMES)}")
    return out


def _kinds_arg(s: str) -> tuple[str, ...]:
    from mtt_fast.evaluation import CORESET_KINDS

    out = tuple(k.strip() for k in s.split(",") if k.strip())
    bad = [k for k in out if k not in CORESET_KINDS]
    if bad:
        raise _Fail(f"unknown baseline(s) {bad}; known: {', '.join(CORESET_KINDS)}")
    return out


def _model_kwargs_for(models: tuple[str, ...], model: str, kwargs: dict) -> dict:
    return {m: (dict(kwargs) if m == model else {}) for m in models}


def _prepare(dataset: str, root, zca: bool, device):
    from mtt_fast.data import prepare

    return prepare(dataset, root=root, zca=zca, device=device)


def _train_store(cfg, data, out: Path, device, progress: bool):
    from mtt_fast.experts import train_experts

    return train_experts(
        dataset=cfg.dataset,
        model=cfg.model,
        num_experts=cfg.num_experts,
        epochs=max(cfg.buffer_epochs, cfg.min_epochs),
        lr=cfg.expert_lr,
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
    )


def _versions() -> dict:
    return {
        "mtt_fast": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _fmt(r: dict | None) -> str:
    if not r:
        return "-"
    return f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f} %"


# ---------------------------------------------------------------------------- commands


def _cmd_info(a: argparse.Namespace) -> int:
    from mtt_fast import _jit, backends

    lines, fix = _jit.describe()  # first: backends.report() must not start a build
    _print(f"mtt-fast {__version__}")
    _print(f"python   {platform.python_version()} ({platform.platform()})")
    _print(f"torch    {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs += [
            f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
        ]
    _print(f"devices  {', '.join(devs)}")
    _print(f"threads  {torch.get_num_threads()}")
    _print(f"triton   {'importable' if backends.triton_importable() else 'not installed'}")
    _print("backends (best first for auto):")
    for op, per_dev in backends.report().items():
        for dev, names in per_dev.items():
            _print(f"  {op:<5s} {dev:<5s} {', '.join(names)}")
    for line in lines:
        _print(line)
    _print(f"to get what is missing: {fix}" if fix else "nothing missing")
    return 0


def _cmd_build_ops(a: argparse.Namespace) -> int:
    from mtt_fast import _jit

    return _jit.build_ops(strict=a.strict, quiet=a.quiet)


def _cmd_buffer(a: argparse.Namespace) -> int:
    cfg = _config(a, a.dataset)
    out = Path(a.out or f"buffers/{cfg.dataset}")
    data = _prepare(cfg.dataset, a.root, cfg.zca, a.device)
    store = _train_store(cfg, data, out, a.device, not a.no_progress)
    _print(f"{store!r}")
    return 0


def _cmd_import(a: argparse.Namespace) -> int:
    from mtt_fast.store import import_buffers

    key = a.dataset.lower().replace("_", "")
    shape = _SHAPES.get(key) or _SHAPES.get(key.replace("-", ""))
    if a.channels and a.num_classes and a.im_size:
        shape = (a.channels, a.num_classes, a.im_size)
    if shape is None:
        from mtt_fast.data import load_dataset

        ds = load_dataset(a.dataset, root=a.root, split="train")
        shape = (ds.images.shape[1], len(ds.classes), int(ds.images.shape[2]))
    c, k, s = shape
    kw = {n: v for n, v in (("width", a.width), ("depth", a.depth)) if v is not None}
    store = import_buffers(
        a.files,
        a.out,
        a.model,
        a.dataset,
        a.channels or c,
        a.num_classes or k,
        a.im_size or s,
        zca=a.zca,
        model_kwargs=kw,
        append=a.append,
    )
    _print(f"{store!r}")
    return 0


def _cmd_distill(a: argparse.Namespace) -> int:
    from mtt_fast.distillation import distill
    from mtt_fast.store import TrajectoryStore

    store = TrajectoryStore.open(a.store)
    dataset = a.dataset or store.meta.get("dataset") or "digits"
    cfg = _config(a, dataset)
    out = Path(a.out or f"runs/{cfg.dataset}-ipc{cfg.ipc}")
    res = distill(
        dataset=dataset,
        root=a.root,
        store=store,
        ipc=cfg.ipc,
        preset=cfg,
        out=out,
        resume=a.resume,
        device=a.device,
        progress=not a.no_progress,
        model=a.model,
        **({"zca": a.zca} if a.zca is not None else {}),
    )
    _print(
        f"distilled {res.images.shape[0]} images ({cfg.dataset}, ipc {cfg.ipc}) in "
        f"{res.seconds:.1f} s; learned lr {res.lr:.5g}; best during distillation: "
        f"{_fmt(res.best)}; wrote {out}"
    )
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from mtt_fast.evaluation import evaluate, evaluate_baselines, load_synthetic
    from mtt_fast.utils import atomic_write_json

    syn = load_synthetic(a.synthetic)
    if not syn.get("dataset"):
        raise _Fail(f"{a.synthetic} does not record its dataset")
    model = syn.get("model") or "ConvNet"
    mk = dict(syn.get("model_kwargs") or {})
    models = _models_arg(a.models, (model,))
    kinds = _kinds_arg(a.baselines) if a.baselines else ()
    data = _prepare(syn["dataset"], a.root, bool(syn.get("zca")), a.device)
    rep = evaluate(
        syn["images"],
        syn["labels"],
        syn["lr"],
        data,
        models,
        a.num_eval,
        a.eval_epochs,
        seed=a.seed,
        device=a.device,
        progress=not a.no_progress,
        model_kwargs=_model_kwargs_for(models, model, mk),
    )
    if kinds:
        ipc = int(syn.get("ipc") or syn["images"].shape[0] // data.num_classes)
        base_lr = a.baseline_lr or (syn.get("config") or {}).get("lr_teacher") or 0.01
        rep.results.update(
            evaluate_baselines(
                data,
                ipc,
                lr=base_lr,
                kinds=kinds,
                models=models,
                num_eval=a.num_eval,
                epochs=a.eval_epochs,
                seed=a.seed,
                device=a.device,
                progress=not a.no_progress,
                model_kwargs=_model_kwargs_for(models, model, mk),
            )
        )
    _print(rep.summary())
    if a.out:
        atomic_write_json(rep.to_dict(), a.out)
    return 0


def run_pipeline(a: argparse.Namespace) -> dict:
    """``mtt-fast run``: experts (or ``--store``), distillation, final evaluation of the
    distilled set against real subsets; writes and returns ``OUT/report.json``'s dict."""
    from mtt_fast.distillation import GRID, distill
    from mtt_fast.evaluation import evaluate, evaluate_baselines
    from mtt_fast.store import TrajectoryStore
    from mtt_fast.utils import atomic_write_json

    t0 = time.perf_counter()
    cfg = _config(a, a.dataset)
    out = Path(a.out or f"runs/{cfg.dataset}-ipc{cfg.ipc}")
    progress = not a.no_progress
    models = _models_arg(a.models, (cfg.model,))
    kinds = _kinds_arg(a.baselines) if a.baselines else ()
    device = torch.device(a.device)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    data = _prepare(cfg.dataset, a.root, cfg.zca, device)
    timings["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if a.store:
        store = TrajectoryStore.open(a.store)
    else:
        _print(f"[1/3] training {cfg.num_experts} experts -> {out / 'buffers'}")
        store = _train_store(cfg, data, out / "buffers", device, progress)
    timings["experts_s"] = time.perf_counter() - t

    _print(f"[2/3] distilling {cfg.dataset} at ipc {cfg.ipc} ({cfg.iterations} iterations)")
    t = time.perf_counter()
    res = distill(
        dataset=cfg.dataset,
        store=store,
        ipc=cfg.ipc,
        preset=cfg,
        out=out,
        resume=a.resume,
        device=device,
        progress=progress,
        data=data,
        model=a.model,
    )
    timings["distill_s"] = time.perf_counter() - t
    cfg = res.config

    _print(f"[3/3] evaluating mtt vs {', '.join(kinds) or 'nothing'} on {', '.join(models)}")
    t = time.perf_counter()
    mk = _model_kwargs_for(models, cfg.model, cfg.model_kwargs)
    num_eval = max(1, cfg.num_eval)
    rep = evaluate(
        res.images,
        res.labels,
        res.lr,
        data,
        models,
        num_eval,
        cfg.epoch_eval_train,
        dsa_strategy=cfg.dsa,
        seed=cfg.seed,
        device=device,
        progress=progress,
        model_kwargs=mk,
    )
    results = dict(rep.results)
    base_lr = a.baseline_lr or cfg.lr_teacher
    if kinds:
        results.update(
            evaluate_baselines(
                data,
                cfg.ipc,
                lr=base_lr,
                kinds=kinds,
                models=models,
                num_eval=num_eval,
                epochs=cfg.epoch_eval_train,
                dsa_strategy=cfg.dsa,
                seed=cfg.seed,
                device=device,
                progress=progress,
                herding_model=None,
                model_kwargs=mk,
            )
        )
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    head = models[0]
    accuracy = {
        src: {"mean": per[head]["mean"], "std": per[head]["std"], "runs": per[head]["runs"]}
        for src, per in results.items()
    }
    per_model = {
        m: {
            src: {"mean": per[m]["mean"], "std": per[m]["std"], "runs": per[m]["runs"]}
            for src, per in results.items()
        }
        for m in models
    }
    best = None
    if res.best is not None:
        best = dict(res.best)
        best["note"] = (
            "best test accuracy seen at the periodic evaluations during distillation; "
            "selected on the test set, so it is optimistic: the headline is accuracy.mtt "
            "(the final synthetic set)"
        )
    report = {
        "dataset": cfg.dataset,
        "ipc": cfg.ipc,
        "model": cfg.model,
        "model_kwargs": cfg.model_kwargs,
        "accuracy": accuracy,
        "per_model": per_model,
        "best_during_distillation": best,
        "learned_lr": res.lr,
        "protocol": {
            "models": list(models),
            "num_eval": num_eval,
            "epochs": cfg.epoch_eval_train,
            "dsa_strategy": cfg.dsa,
            "batch_size": 256,
            "optimizer": "SGD momentum 0.9, weight decay 5e-4, lr x0.1 at half",
            "lr": {"mtt": res.lr, **{k: base_lr for k in kinds}},
            "seed": cfg.seed,
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "iterations": res.iteration,
        "store": str(store.path),
        "num_experts": store.num_experts,
        "expert_epochs_stored": store.epochs,
        "grid": str(out / GRID),
        "synthetic": str(out / "synthetic.pt"),
        "config": cfg.to_dict(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "versions": _versions(),
    }
    atomic_write_json(report, out / "report.json")
    _print(f"{'set':<10s} {head}")
    for src, r in accuracy.items():
        _print(f"{src:<10s} {_fmt(r)}")
    if best is not None:
        _print(f"(best seen during distillation: {_fmt(best)} at iteration {best['iteration']})")
    _print(f"wrote {out / 'report.json'} in {timings['total_s']:.1f} s")
    return report


def _cmd_run(a: argparse.Namespace) -> int:
    run_pipeline(a)
    return 0


_COMMANDS = {
    "info": _cmd_info,
    "build-ops": _cmd_build_ops,
    "buffer": _cmd_buffer,
    "import-buffers": _cmd_import,
    "distill": _cmd_distill,
    "eval": _cmd_eval,
    "run": _cmd_run,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mtt-fast``; returns the exit status (0 ok, 2 bad input, 3 diverged).

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).
    """
    from mtt_fast.distillation import DistillDiverged

    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed its message (or --help / --version)
        return int(e.code or 0) if isinstance(e.code, int) else EXIT_USAGE
    if a.command is None:
        parser.print_help()
        return EXIT_USAGE
    if a.threads:
        torch.set_num_threads(a.threads)
    elif getattr(a, "dataset", None) == "digits" and str(getattr(a, "device", "cpu")).startswith(
        "cpu"
    ):
        torch.set_num_threads(1)
    try:
        return _COMMANDS[a.command](a)
    except DistillDiverged as e:
        print(f"mtt-fast: {e}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    except (_Fail, ValueError, FileNotFoundError, FileExistsError, IndexError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, FileNotFoundError) and not str(e).strip():
            msg = f"file not found: {e.filename}"
        print(f"mtt-fast: error: {msg}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mtt-fast: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
