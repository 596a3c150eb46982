"""Merge finished fidelity cells into ``benchmarks/results/fidelity-mnist.{json,md}``.

Usage: ``python benchmarks/fidelity/table.py OUT --cell DATASET/ipcN --command "..."``

Every ``--cell`` (a folder ``OUT/<dataset>/ipc<N>`` holding the ``report.json`` that
``mtt-fast reproduce`` wrote) replaces the row of the same (dataset, IPC, command) in the
results file; rows of other cells (and other settings of the same cell) are kept, so the MNIST and CIFAR-10-slice runs, made by different
commands (and possibly on different days), end up in one table. Each row keeps the command
that made it and the machine and versions it ran on (``report["versions"]``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtt_fast.pipeline import format_table, versions
from mtt_fast.utils import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parents[1] / "results"
NAME = "fidelity-mnist"


def merge(out: Path, cells: list[str], command: str, results: Path = RESULTS) -> dict:
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
    ap.add_argument("out", type=Path, help="the reproduce output folder")
    ap.add_argument("--cell", action="append", required=True, help="DATASET/ipcN")
    ap.add_argument("--command", required=True, help="the command that made the cells")
    a = ap.parse_args()
    merge(a.out, a.cell, a.command)
    print(f"wrote {RESULTS / NAME}.json and .md")


if __name__ == "__main__":
    main()
