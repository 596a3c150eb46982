"""Evaluate one real-subset baseline of a fidelity cell model by model, resumable across sessions.

Usage: ``python benchmarks/fidelity/baselines.py --dataset cifar10-subset --ipc 10 --kind random``

The same protocol, subset and model seeds as ``mtt-fast reproduce`` (its baselines are
:func:`mtt_fast.evaluation.evaluate_baselines`, whose model ``r`` is seeded with
``seed + r``): the cell's preset at ``--width`` / ``--depth``, DSA, ``--epochs`` epochs,
lr 0.01. Each finished model is appended at once to
``benchmarks/results/fidelity-baselines.json`` (a committed file, so a 1000-epoch baseline
of 5 models at width 128, an hour and a half of this project's 2-core CPUs, can be spread
over sessions on fresh machines); a rerun starts at the first model not recorded. Once a
baseline has ``--num-eval`` models, ``table.py`` fills it into the rows of
``fidelity-mnist.{json,md}`` that were made without it (``BASELINES=""``). One process per
(cell, kind): two kinds may run side by side, e.g. at ``--threads 1`` each.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
NAME = "fidelity-baselines"


@contextmanager
def locked(results: Path):
    """Hold the results file's lock (two kinds may finish a model at the same moment)."""
    with open(results / f".{NAME}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def load(results: Path = RESULTS) -> dict:
    path = results / f"{NAME}.json"
    return json.loads(path.read_text()) if path.exists() else {"entries": []}


def find(book: dict, dataset: str, ipc: int, kind: str, protocol: dict) -> dict | None:
    """The entry of (dataset, ipc, kind, protocol), if any."""
    for e in book["entries"]:
        if (e["dataset"], int(e["ipc"]), e["kind"], e["protocol"]) == (dataset, ipc, kind, protocol):
            return e
    return None


def protocol_of(cfg, lr: float) -> dict:
    """What makes two evaluations of a baseline the same experiment."""
    from mtt_fast.pipeline import EVAL_BATCH

    return {
        "model": cfg.model,
        "model_kwargs": dict(cfg.model_kwargs),
        "zca": bool(cfg.zca),
        "dsa_strategy": cfg.dsa,
        "epochs": int(cfg.epoch_eval_train),
        "batch_size": EVAL_BATCH,
        "lr": float(lr),
        "seed": int(cfg.seed),
    }


def record(results: Path, dataset: str, ipc: int, kind: str, protocol: dict, r: int, run: dict) -> None:
    """Add model ``r``'s result (atomically: the file is never half-written)."""
    from mtt_fast.utils import atomic_write_json

    with locked(results):
        book = load(results)
        entry = find(book, dataset, ipc, kind, protocol)
        if entry is None:
            entry = {"dataset": dataset, "ipc": ipc, "kind": kind, "protocol": protocol, "models": {}}
            book["entries"].append(entry)
        entry["models"][str(r)] = run
        book["entries"].sort(key=lambda e: (e["dataset"], int(e["ipc"]), e["kind"]))
        atomic_write_json(book, results / f"{NAME}.json")


def main(argv: list[str] | None = None, results: Path = RESULTS) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--ipc", type=int, required=True)
    ap.add_argument("--kind", required=True, choices=("random", "herding"))
    ap.add_argument("--data-path", default="../shared/data")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1000, help="training epochs per model")
    ap.add_argument("--num-eval", type=int, default=5, help="models in all")
    ap.add_argument("--max-models", type=int, default=None, help="stop after this many new models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)

    import torch

    from mtt_fast.config import preset
    from mtt_fast.data import prepare
    from mtt_fast.evaluation import BASELINE_LR, coreset, evaluate
    from mtt_fast.pipeline import versions

    torch.set_num_threads(a.threads)
    cfg = preset(
        a.dataset,
        a.ipc,
        model_kwargs={"width": a.width, "depth": a.depth},
        epoch_eval_train=a.epochs,
    )
    proto = protocol_of(cfg, BASELINE_LR)
    done = (find(load(results), a.dataset, a.ipc, a.kind, proto) or {"models": {}})["models"]
    todo = [r for r in range(a.num_eval) if str(r) not in done][: a.max_models]
    print(f"{a.dataset} ipc {a.ipc} {a.kind}: {len(done)} model(s) recorded, running {todo}")
    if not todo:
        return
    data = prepare(a.dataset, root=a.data_path, zca=cfg.zca, device=a.device)
    xs, ys = coreset(data, a.ipc, a.kind, cfg.seed, None)
    for r in todo:
        t = time.perf_counter()
        rep = evaluate(
            xs,
            ys,
            BASELINE_LR,
            data,
            (cfg.model,),
            1,
            cfg.epoch_eval_train,
            proto["batch_size"],
            cfg.dsa,
            cfg.seed + r,  # model r of evaluate_baselines' num_eval models
            a.device,
            False,
            {cfg.model: dict(cfg.model_kwargs)},
            source=a.kind,
        )
        res = rep.results[a.kind][cfg.model]
        run = {
            "test_acc": res["runs"][0],
            "train_acc": res["train_mean"],
            "seconds": round(time.perf_counter() - t, 1),
            "threads": a.threads,
            "versions": versions(),
        }
        record(results, a.dataset, a.ipc, a.kind, proto, r, run)
        print(f"  model {r}: {100 * run['test_acc']:.2f} % ({run['seconds'] / 60:.1f} min)")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import table

    table.merge(None, [], "", results)  # fills the rows this baseline completes


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # a bad dataset, IPC or data path: one line
        sys.exit(f"baselines.py: {e}")
