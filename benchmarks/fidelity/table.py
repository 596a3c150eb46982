"""Merge finished fidelity cells into ``benchmarks/results/fidelity-mnist.{json,md}``.

Usage: ``python benchmarks/fidelity/table.py OUT --cell DATASET/ipcN --command "..."``
(or ``python benchmarks/fidelity/table.py --fill``: only fill baselines, below)

Every ``--cell`` (a folder ``OUT/<dataset>/ipc<N>`` holding the ``report.json`` that
``mtt-fast reproduce`` wrote) replaces the row of the same (dataset, IPC, command) in the
results file; rows of other cells (and other settings of the same cell) are kept, so the MNIST and CIFAR-10-slice runs, made by different
commands (and possibly on different days), end up in one table. Each row keeps the command
that made it and the machine and versions it ran on (``report["versions"]``).

A row made without a baseline (``BASELINES=""``) gets it from
``fidelity-baselines.json`` once ``baselines.py`` has evaluated all of its models there
under the row's protocol (dataset, IPC, model and kwargs, ZCA, DSA, epochs, batch, seed);
``protocol.lr`` gets the lr they ran at (0.01) and ``protocol.lr_source`` names that file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mtt_fast.pipeline import format_table, versions
from mtt_fast.utils import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parents[1] / "results"
NAME = "fidelity-mnist"
BASELINES = "fidelity-baselines"


def fill_baselines(rows: list[dict], results: Path = RESULTS) -> int:
    """Fill the baselines a row lacks from ``fidelity-baselines.json`` (see the docstring);
    returns how many were filled."""
    filled = 0
    path = results / f"{BASELINES}.json"  # written by baselines.py
    book = json.loads(path.read_text()) if path.exists() else {"entries": []}
    for row in rows:
        proto, cfg = row["protocol"], row.get("config", {})
        n, model = int(proto["num_eval"]), row["model"]
        for e in book["entries"]:
            p = e["protocol"]
            runs = [e["models"].get(str(r)) for r in range(n)]
            theirs = (e["dataset"], int(e["ipc"]), p["model"], p["model_kwargs"], p["zca"])
            ours = (row["dataset"], int(row["ipc"]), model, row["model_kwargs"], cfg.get("zca"))
            keys = ("dsa_strategy", "epochs", "batch_size", "seed")
            same = theirs == ours and all(p[k] == proto[k] for k in keys)
            if not same or e["kind"] in row["accuracy"] or None in runs:
                continue
            acc = [float(x["test_acc"]) for x in runs]
            stats = {"mean": float(np.mean(acc)), "std": float(np.std(acc)), "runs": acc}
            row["accuracy"][e["kind"]] = stats
            row.setdefault("per_model", {}).setdefault(model, {})[e["kind"]] = stats
            proto.setdefault("lr", {})[e["kind"]] = p["lr"]
            proto.setdefault("lr_source", {})[e["kind"]] = (
                "fixed (DC / MTT protocol); evaluated model by model by "
                "benchmarks/fidelity/baselines.py (benchmarks/results/fidelity-baselines.json)"
            )
            filled += 1
    return filled


def merge(out: Path | None, cells: list[str], command: str, results: Path = RESULTS) -> dict:
    path = results / f"{NAME}.json"
    table = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows = {(r["dataset"], int(r["ipc"]), r["command"]): r for r in table["rows"]}
    for cell in cells:
        report_path = out / cell / "report.json"
        if not report_path.is_file():
            sys.exit(f"table.py: {report_path}: no report (the cell has not finished)")
        row = json.loads(report_path.read_text())
        row["command"] = command
        rows[(row["dataset"], int(row["ipc"]), command)] = row
    table["rows"] = [rows[k] for k in sorted(rows)]
    if not fill_baselines(table["rows"], results) and not cells and path.exists():
        return table  # nothing new: the files stay as they are
    table["note"] = (
        "accuracy.mtt is the final synthetic set (headline); accuracy_paper_style is the best "
        "periodic evaluation (the paper's way, optimistic); published holds reruns by later "
        "work for MNIST. The CIFAR-10 slice (4,000 train / 1,000 test images) has no "
        "published row and is not comparable with the paper's CIFAR-10 numbers. Each row "
        "names the command that made it; its versions/timings are those of its own run."
    )
    table["merged_by"] = versions()
    atomic_write_json(table, path)
    md = format_table(table["rows"]) + "\n" + "\n".join(
        f"- {r['dataset']} IPC {r['ipc']}: `{r['command']}` "
        f"({r.get('versions', {}).get('cpu', '?')}, "
        f"{r.get('timings', {}).get('total_s', 0) / 60:.0f} min)"
        for r in table["rows"]
    ) + "\n"
    atomic_write_text(md, results / f"{NAME}.md")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", help="the reproduce output folder")
    ap.add_argument("--cell", action="append", default=[], help="DATASET/ipcN")
    ap.add_argument("--command", help="the command that made the cells")
    ap.add_argument("--fill", action="store_true", help="only fill baselines into the rows")
    a = ap.parse_args()
    if not a.fill and not (a.out and a.cell and a.command):
        ap.error("give OUT, --cell and --command (or --fill)")
    before = (RESULTS / f"{NAME}.json").read_bytes() if (RESULTS / f"{NAME}.json").exists() else None
    merge(a.out, a.cell, a.command or "", RESULTS)
    changed = before != (RESULTS / f"{NAME}.json").read_bytes()
    print(f"wrote {RESULTS / NAME}.json and .md" if changed else "nothing new to write")


if __name__ == "__main__":
    main()
