"""MNIST IPC 1, one random real image per class (seed 0, the reproduce cell's), ConvNet width
128: the random baseline under several evaluation augmentations (DSA groups, or none).

Usage: ``python benchmarks/fidelity/random_augment.py DATA STRATEGY [STRATEGY ...]``
(``none`` = no augmentation); merges its rows into
``benchmarks/results/fidelity-mnist-random-ipc1-augment.json`` (rows of other strategies kept).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from mtt_fast.data.prepare import prepare
from mtt_fast.evaluation.baselines import evaluate_baselines
from mtt_fast.pipeline import versions
from mtt_fast.utils import atomic_write_json, keep_freed_memory

OUT = Path(__file__).resolve().parents[1] / "results" / "fidelity-mnist-random-ipc1-augment.json"


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: random_augment.py DATA STRATEGY [STRATEGY ...]")
    root, strategies = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(2)
    keep_freed_memory()
    data = prepare("mnist", root=root)
    old = json.loads(OUT.read_text()) if OUT.is_file() else {}
    rows = old.get("rows", {})
    for strat in strategies:
        t = time.time()
        r = evaluate_baselines(
            data,
            1,
            kinds=("random",),
            num_eval=5,
            epochs=1000,
            dsa_strategy=None if strat == "none" else strat,
            model_kwargs={"width": 128, "depth": 3},
        )["random"]["ConvNet"]
        rows[strat] = {
            "mean": r["mean"],
            "std": r["std"],
            "runs": r["runs"],
            "seconds": time.time() - t,
        }
        print(strat, json.dumps(rows[strat]), flush=True)
    atomic_write_json(
        {
            "command": " ".join(["python", *sys.argv[:2], *rows]),
            "rows": rows,
            "versions": versions(),
            "threads": 2,
        },
        OUT,
    )


if __name__ == "__main__":
    main()
