"""The ``mtt-fast`` command: ``info | buffer | import-buffers | distill | eval | run | reproduce``.

A thin layer over the library: each subcommand's settings are generated from the sections
of :class:`mtt_fast.config.Config` it uses (``buffer``: experts; ``distill``: distillation
and its periodic evaluation; ``run`` / ``reproduce``: all), so it shows and takes only its
own. A setting given on the command line is *explicit*: it is never silently replaced by a
store's or checkpoint's value (the run stops, naming both).

``mtt-fast run`` with no arguments distils scikit-learn's digits (offline) at 1 image per
class end to end, with the evaluation of the distilled set against random and herding real
subsets, written to ``runs/digits-ipc1/report.json``.

Bad input (a missing store, an unknown dataset, a bad value) prints one line
``mtt-fast: error: ...`` to stderr and exits with status 2; a diverged distillation exits
with status 3.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from mtt_fast._version import __version__

__all__ = ["main", "build_parser", "run_pipeline", "config_from_args"]

EXIT_USAGE = 2
EXIT_DIVERGED = 3


class _Fail(Exception):
    """A user error reported as one line and exit status 2."""


def _print(*a: Any) -> None:
    from mtt_fast import distributed

    if distributed.is_main():  # under torchrun: rank 0 speaks for all
        print(*a, flush=True)


# ---------------------------------------------------------------------------- options


def _int_or(word: str):
    def parse(s: str) -> int | str:
        if s.lower() == word or (word == "all" and s.lower() == "none"):
            return word
        try:
            return int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int or {word!r}, got {s!r}") from None

    return parse


def _add_section(p: argparse.ArgumentParser, section: str, title: str, skip=()) -> None:
    """Options for the settings of one configuration section; every default is None so
    the settings given explicitly are known (the preset fills the rest)."""
    from mtt_fast.config import field_specs

    g = p.add_argument_group(title)
    for name, default, meta in field_specs(section):
        if name in skip:
            continue
        flag = meta.get("flag") or "--" + name.replace("_", "-")
        kind = meta.get("kind")
        kw: dict[str, Any] = {"dest": name, "default": None, "help": meta.get("help")}
        if kind is bool or isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(kind, tuple):
            kw["choices"] = kind
        elif kind == "int_or_all":
            kw["type"] = _int_or("all")
        elif kind == "int_or_auto":
            kw["type"] = _int_or("auto")
        elif kind == "csv":
            kw["type"] = str
        elif default is None or isinstance(default, int):
            kw["type"] = int
        elif isinstance(default, float):
            kw["type"] = float
        g.add_argument(flag, **kw)


def _add_run(p: argparse.ArgumentParser, default_dataset: str | None, ipc_list: bool = False) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default=default_dataset, help="dataset name (default: %(default)s)")
    g.add_argument("--data-path", "--root", dest="root", default=None, help="data folder (e.g. ../shared/data)")
    g.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    if ipc_list:
        g.add_argument("--ipc", default="1,10", help="images per class, e.g. 1,10,50 (default 1,10)")
    else:
        g.add_argument("--ipc", type=int, default=None, help="images per class (default 1)")
    g.add_argument("--model", default=None, help="architecture (default: the preset's / the store's)")
    g.add_argument("--width", type=int, help="ConvNet width")
    g.add_argument("--depth", type=int, help="ConvNet depth")
    g.add_argument("--zca", action=argparse.BooleanOptionalAction, default=None, help="ZCA-whiten the data")
    g.add_argument("--dsa-strategy", default=None, help="DSA groups joined by _ ('none' disables)")
    g.add_argument("--seed", type=int, default=None, help="seed of every generator (default 0)")
    g.add_argument(
        "--preset",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from the paper's / our preset for (dataset, ipc) (default on)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mtt-fast``."""
    ap = argparse.ArgumentParser(
        prog="mtt-fast", description="Dataset distillation by Matching Training Trajectories (MTT)."
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
    _add_run(p, "digits")
    _add_section(p, "experts", "experts (the original buffer.py; independent of the IPC)")
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

    p = sub.add_parser("distill", help="distill a dataset from a trajectory store")
    _add_run(p, None)
    _add_section(p, "distill", "distillation (the original distill.py)")
    _add_section(p, "eval", "periodic evaluation")
    p.add_argument("--store", required=True, help="trajectory store folder (from `buffer`)")
    p.add_argument("--out", help="output folder (default: runs/<dataset>-ipc<ipc>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in OUT")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("eval", help="evaluate a synthetic.pt")
    p.add_argument("synthetic", help="a synthetic.pt written by distill")
    p.add_argument("--models", default=None, help="comma-separated (default: the set's own model)")
    p.add_argument("--num-eval", type=int, default=5)
    p.add_argument("--eval-epochs", type=int, default=1000)
    p.add_argument("--baselines", default="", help="also evaluate e.g. random,herding")
    p.add_argument("--baseline-lr", type=float, default=None,
                   help="lr of the real-subset baselines (default 0.01, the DC/MTT protocol)")
    p.add_argument("--data-path", "--root", dest="root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out report")
    p.add_argument("--no-progress", action="store_true")

    for name, helptext in (
        ("run", "experts + distillation + evaluation vs real subsets"),
        ("reproduce", "the paper's protocol over datasets x IPC: a paper-style table (resumable)"),
    ):
        p = sub.add_parser(name, help=helptext)
        _add_run(p, "mnist" if name == "reproduce" else "digits", ipc_list=name == "reproduce")
        _add_section(p, "experts", "experts (the original buffer.py; independent of the IPC)")
        _add_section(p, "distill", "distillation (the original distill.py)")
        _add_section(p, "eval", "evaluation")
        if name == "run":
            p.add_argument("--out", help="output folder (default: runs/<dataset>-ipc<ipc>)")
            p.add_argument("--store", help="use this trajectory store instead of training experts")
            p.add_argument("--resume", action="store_true", help="continue an interrupted distillation")
            p.add_argument("--overwrite", action="store_true", help="replace an earlier run in OUT")
        else:
            p.add_argument("--out", default="runs/reproduce", help="output folder (default %(default)s)")
            p.add_argument("--no-record-argv", dest="record_argv", action="store_false",
                           help="do not record the command line in table.json")
        p.add_argument("--baselines", default="random,herding", help="real subsets to compare (default %(default)s)")
        p.add_argument("--baseline-lr", type=float, default=None,
                       help="lr of the real-subset baselines (default 0.01, the DC/MTT protocol)")
        p.add_argument("--no-progress", action="store_true")
    return ap


# ---------------------------------------------------------------------------- settings


def explicit_settings(a: argparse.Namespace) -> dict[str, Any]:
    """The configuration settings given on the command line (flat names -> values)."""
    from mtt_fast.config import field_names

    names = field_names() - {"dataset", "ipc", "model_kwargs"}
    out = {k: getattr(a, k) for k in names if getattr(a, k, None) is not None}
    if out.get("batch_syn") == "all":
        out["batch_syn"] = None  # explicit: the whole set
    mk = {n: getattr(a, n) for n in ("width", "depth") if getattr(a, n, None) is not None}
    if mk:
        out["model_kwargs"] = mk
    return out


def config_from_args(a: argparse.Namespace, dataset: str, ipc: int | None = None):
    """``(Config, explicit names)``: the preset for (dataset, ipc) (or the defaults with
    ``--no-preset``) with the command line's settings on top."""
    from mtt_fast.config import Config, preset

    given = explicit_settings(a)
    ipc = ipc if ipc is not None else (a.ipc if isinstance(getattr(a, "ipc", None), int) else 1)
    if a.preset:
        base = preset(dataset, ipc)
    else:
        base = Config(dataset=dataset, ipc=ipc)
    if "model" in given and "model_kwargs" not in given and given["model"] != base.model:
        given["model_kwargs"] = {}  # a preset's ConvNet options do not carry over
    elif "model_kwargs" in given:
        given["model_kwargs"] = {**base.model_kwargs, **given["model_kwargs"]}
    return base.replace(**given), set(given)


def _models_arg(s: str | None) -> tuple[str, ...] | None:
    if not s:
        return None
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


def _check_common(a: argparse.Namespace) -> None:
    """What can be checked before any work starts: threads, device, output folders."""
    if a.threads is not None and a.threads < 1:
        raise _Fail(f"--threads must be >= 1, got {a.threads}")
    dev = getattr(a, "device", None)
    if dev is not None:
        try:
            d = torch.device(dev)
        except (RuntimeError, ValueError):
            raise _Fail(f"--device {dev!r} is not a device (cpu, cuda, cuda:N)") from None
        if d.type == "cuda" and not torch.cuda.is_available():
            why = "this torch is a CPU build" if not torch.version.cuda else "no CUDA GPU is visible"
            raise _Fail(f"--device {dev}: {why} (torch {torch.__version__})")
        if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
            raise _Fail(f"--device {dev}: only {torch.cuda.device_count()} CUDA device(s)")
        if d.type not in ("cpu", "cuda"):
            raise _Fail(f"--device {dev}: only cpu and cuda are supported")
    out = getattr(a, "out", None)
    if out:
        p = Path(out)
        folder = p.parent if a.command == "eval" else p  # eval --out is a file
        if folder.exists() and not folder.is_dir():
            raise _Fail(f"--out {out}: {folder} is a file, not a folder")
        probe = folder
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise _Fail(f"--out {out}: {probe} is a file, not a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise _Fail(f"--out {out}: {probe} is not writable")


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
    from mtt_fast.data import prepare
    from mtt_fast.pipeline import train_store

    cfg, _ = config_from_args(a, a.dataset)
    out = Path(a.out or f"buffers/{cfg.dataset}")
    data = prepare(cfg.dataset, root=a.root, zca=cfg.zca, device=a.device)
    from mtt_fast import distributed

    # under torchrun every process claims and trains experts of the one store
    store = train_store(cfg, data, out, a.device, not a.no_progress and distributed.is_main())
    _print(f"{store!r}")
    return 0


def _cmd_import(a: argparse.Namespace) -> int:
    from mtt_fast.experts import import_buffers

    kw = {n: v for n, v in (("width", a.width), ("depth", a.depth)) if v is not None}
    store = import_buffers(
        a.files, a.out, a.model, a.dataset, a.channels, a.num_classes, a.im_size,
        zca=a.zca, model_kwargs=kw, append=a.append,
    )  # fmt: skip
    _print(f"{store!r}")
    return 0


def _cmd_distill(a: argparse.Namespace) -> int:
    from mtt_fast.distillation import distill
    from mtt_fast.experts import TrajectoryStore

    store = TrajectoryStore.open(a.store)
    dataset = a.dataset or store.meta.get("dataset") or "digits"
    cfg, explicit = config_from_args(a, dataset)
    out = Path(a.out or f"runs/{cfg.dataset}-ipc{cfg.ipc}")
    res = distill(
        root=a.root,
        store=store,
        preset=cfg,
        out=out,
        resume=a.resume,
        overwrite=a.overwrite,
        device=a.device,
        progress=not a.no_progress,
        explicit=explicit,
    )
    _print(
        f"distilled {res.images.shape[0]} images ({cfg.dataset}, ipc {res.config.ipc}) in "
        f"{res.seconds:.1f} s; learned lr {res.lr:.5g}; best during distillation: "
        f"{_fmt(res.best)}; wrote {out}"
    )
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from mtt_fast.evaluation import BASELINE_LR, evaluate, evaluate_baselines
    from mtt_fast.synthetic import SyntheticSet
    from mtt_fast.utils import atomic_write_json

    if a.num_eval < 1 or a.eval_epochs < 1:
        raise _Fail(f"--num-eval and --eval-epochs must be >= 1, got {a.num_eval} and {a.eval_epochs}")
    if a.out and Path(a.out).exists() and not a.overwrite:
        raise _Fail(f"--out {a.out} already holds a report; pass --overwrite to replace it")
    syn = SyntheticSet.load(a.synthetic)
    if not syn.dataset:
        raise _Fail(f"{a.synthetic} does not record its dataset")
    if not bool(torch.isfinite(syn.images).all()):
        raise _Fail(f"{a.synthetic}: the synthetic images are not all finite (a diverged run?)")
    from mtt_fast.data import prepare

    models = _models_arg(a.models) or (syn.model,)
    kinds = _kinds_arg(a.baselines) if a.baselines else ()
    mk = {m: (dict(syn.model_kwargs) if m == syn.model else {}) for m in models}
    data = prepare(syn.dataset, root=a.root, zca=syn.zca, device=a.device)
    common = dict(
        dsa_strategy=syn.dsa_strategy, seed=a.seed, device=a.device,
        progress=not a.no_progress, model_kwargs=mk,
    )  # fmt: skip
    rep = evaluate(syn, data=data, models=models, num_eval=a.num_eval, epochs=a.eval_epochs, **common)
    if kinds:
        ipc = int(syn.ipc or syn.images.shape[0] // data.num_classes)
        rep.results.update(
            evaluate_baselines(
                data, ipc, lr=a.baseline_lr or BASELINE_LR, kinds=kinds, models=models,
                num_eval=a.num_eval, epochs=a.eval_epochs, **common,
            )  # fmt: skip
        )
    _print(rep.summary())
    if a.out:
        atomic_write_json(rep.to_dict(), a.out)
    return 0


def run_pipeline(a: argparse.Namespace) -> dict:
    """``mtt-fast run``: :func:`mtt_fast.pipeline.run` with the command line's settings."""
    from mtt_fast.evaluation import BASELINE_LR
    from mtt_fast.pipeline import run

    cfg, explicit = config_from_args(a, a.dataset)
    return run(
        out=a.out,
        root=a.root,
        store=a.store,
        device=a.device,
        resume=a.resume,
        overwrite=a.overwrite,
        baselines=_kinds_arg(a.baselines) if a.baselines else (),
        baseline_lr=a.baseline_lr or BASELINE_LR,
        progress=not a.no_progress,
        config=cfg,
        explicit=explicit,
        log=_print,
    )


def _cmd_run(a: argparse.Namespace) -> int:
    run_pipeline(a)
    return 0


def _cmd_reproduce(a: argparse.Namespace) -> int:
    from mtt_fast.pipeline import reproduce

    reproduce(
        datasets=a.dataset,
        ipcs=a.ipc,
        out=a.out,
        root=a.root,
        device=a.device,
        progress=not a.no_progress,
        log=_print,
        command="mtt-fast " + " ".join(sys.argv[1:]) if a.record_argv else None,
        baselines=_kinds_arg(a.baselines) if a.baselines else (),
        **explicit_settings(a),
    )
    return 0


_COMMANDS = {
    "info": _cmd_info,
    "build-ops": _cmd_build_ops,
    "buffer": _cmd_buffer,
    "import-buffers": _cmd_import,
    "distill": _cmd_distill,
    "eval": _cmd_eval,
    "run": _cmd_run,
    "reproduce": _cmd_reproduce,
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
    try:
        _check_common(a)
    except _Fail as e:
        print(f"mtt-fast: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    if a.threads:
        torch.set_num_threads(a.threads)
    elif getattr(a, "dataset", None) == "digits" and str(getattr(a, "device", "cpu")).startswith(
        "cpu"
    ):
        torch.set_num_threads(1)
    if os.environ.get("MTT_FAST_KEEP_FREED", "1") != "0":
        # freed activations are reused instead of page-faulted in again: expert training at
        # width 128 on one CPU core 1.67x faster (README "Performance"); peak unchanged
        from mtt_fast.utils import keep_freed_memory

        keep_freed_memory()
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
