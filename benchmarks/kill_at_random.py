"""Kill expert training, distillation and evaluation at random moments; check nothing is lost.

Usage::

    python benchmarks/kill_at_random.py [--kills 20] [--seed 0] [--work DIR] [--json FILE]

For each stage (``buffer``, ``distill``, ``eval``) the script first makes an uninterrupted
reference run of a tiny job on the bundled digits, then runs the same command again and
again into a victim folder, each time ``SIGKILL``-ing it after a random delay drawn over
the reference's duration (the distillation writes a checkpoint every iteration, so many
kills land inside a checkpoint write), until ``--kills`` kills have been made. After every
kill it checks that everything on disk loads (the store opens and verifies every expert;
the checkpoint, the synthetic set and every metrics line read back; a report is whole JSON).
Whenever a run finishes it checks that the result equals the reference bit for bit and
that no temporary file is left, then starts over in a fresh folder. It counts kills, kills
that left a temporary file behind (i.e. landed during a write; every other kill is aimed at
one: it fires as soon as a temporary file appears), finished resumes and failures,
prints them as JSON and exits 1 on any failure.

Every stage runs through the ``mtt-fast`` command in a subprocess with one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--dataset", "digits", "--width", "8", "--depth", "2"]
BUFFER = ["buffer", *TINY_MODEL, "--num-experts", "3", "--expert-epochs-train", "3"]
DISTILL = ["distill", "--ipc", "2", "--iterations", "25", "--syn-steps", "6",
           "--expert-epochs", "1", "--max-start-epoch", "2", "--checkpoint-it", "1",
           "--eval-it", "0", "--num-eval", "1", "--eval-epochs", "20"]  # fmt: skip
EVAL = ["eval", "--num-eval", "2", "--eval-epochs", "150"]


def _cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "mtt_fast.cli", "--threads", "1", *args, "--no-progress"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(args: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(_cmd(args), env=_env(), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"reference run failed: {' '.join(args)}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def _temps(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".claim"))


# ----------------------------------------------------------------------------- checks
def _check_buffer(folder: Path, ref: Path | None) -> None:
    import torch

    from mtt_fast.experts import TrajectoryStore

    if not (folder / "meta.json").exists():
        return
    store = TrajectoryStore.open(folder)  # verifies every expert
    for part in folder.glob("expert_*.partial.pt"):  # an unfinished expert's saved state
        torch.load(part, weights_only=True)
    if ref is not None:
        assert not list(folder.glob("*.partial.pt")), "a finished store kept a partial expert"
        want = TrajectoryStore.open(ref)
        assert store.num_experts == want.num_experts, (store.num_experts, want.num_experts)
        for i in range(store.num_experts):
            assert np.array_equal(store.expert(i), want.expert(i)), f"expert {i} differs"


def _check_distill(folder: Path, ref: Path | None) -> None:
    import torch

    from mtt_fast.distillation.state import DistillState
    from mtt_fast.synthetic import load_synthetic
    from mtt_fast.utils import read_jsonl

    if (folder / "checkpoint.pt").exists():
        DistillState.read_checkpoint(folder / "checkpoint.pt")
    if (folder / "synthetic.pt").exists():
        load_synthetic(folder / "synthetic.pt")
    if (folder / "metrics.jsonl").exists():
        read_jsonl(folder / "metrics.jsonl")
    if ref is not None:
        a = load_synthetic(folder / "synthetic.pt")
        b = load_synthetic(ref / "synthetic.pt")
        assert torch.equal(a["images"], b["images"]), "synthetic images differ"
        la, lb = (torch.as_tensor(x.get("lr", float("nan"))) for x in (a, b))
        assert torch.equal(la, lb) or (la.isnan().all() and lb.isnan().all()), "lr differs"


def _check_eval(report: Path, ref: Path | None) -> None:
    if report.exists():
        json.loads(report.read_text())
    if ref is not None:
        a, b = json.loads(report.read_text()), json.loads(ref.read_text())
        assert a["results"] == b["results"], "evaluation results differ"


def _wait_for_a_write(proc: subprocess.Popen, folder: Path, limit: float) -> None:
    """Return as soon as ``folder`` holds a temporary file (a write in progress), the
    process ended, or ``limit`` seconds passed."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end and proc.poll() is None:
        try:
            if any(".tmp-" in e.name for e in os.scandir(folder)):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.0002)


# ----------------------------------------------------------------------------- one stage
def stage(name: str, args, target: Path, check, ref: Path, kills: int, ref_s: float,
          rng: random.Random, done_when) -> dict:  # fmt: skip
    """Kill ``args`` (a function of the run count) ``kills`` times; see the module doc.
    ``target`` is the victim's output (a folder, or the report file of ``eval``)."""
    folder = target if target.suffix != ".json" else target.parent
    counts = {"kills": 0, "kills_during_write": 0, "finished_resumes": 0, "fresh_starts": 0,
              "failures": []}  # fmt: skip
    runs = 0
    killed_done = False
    while counts["kills"] < kills or runs:
        if runs == 0:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True) if folder != target else None
            counts["fresh_starts"] += 1
        proc = subprocess.Popen(_cmd(args(runs)), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        runs += 1
        delay = rng.uniform(0.5, 1.2 * ref_s) if counts["kills"] < kills else None
        # every other kill is aimed at a write: as soon as a temporary file shows up
        aimed = delay is not None and counts["kills"] % 2 == 1
        try:
            if aimed:
                _wait_for_a_write(proc, folder, delay)
            proc.wait(timeout=delay if not aimed else 0)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            counts["kills"] += 1
            counts["kills_during_write"] += bool(_temps(folder))  # the kill left a temp file
            try:
                check(target, None)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                counts["failures"].append(f"after kill {counts['kills']}: {e}")
            if not done_when(target):
                continue
            killed_done = True  # the kill came after the result was published: check it
        err = "" if killed_done else proc.stderr.read()
        if not killed_done and proc.returncode != 0:
            counts["failures"].append(f"run {runs} exited {proc.returncode}: {err[-300:]}")
            break  # a failing command would fail again
        if not done_when(target):
            continue
        if runs > 1:
            counts["finished_resumes"] += 1
        try:
            check(target, ref)
            if killed_done:  # what the next open of the folder does with a killed writer's files
                from mtt_fast.utils import remove_dead_temps

                for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
                    remove_dead_temps(d)
                killed_done = False
            left = _temps(folder)
            assert not left, f"temporary files left: {left}"
        except Exception as e:  # noqa: BLE001
            counts["failures"].append(f"finished run: {e}")
        runs = 0
    print(f"{name}: {json.dumps(counts)}", flush=True)
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the counts here")
    ap.add_argument("--stages", default="buffer,distill,eval", help="comma-separated subset")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="mtt-kills-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(a.seed)
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()

    ref_store, ref_run, ref_report = work / "ref-store", work / "ref-run", work / "ref-report.json"
    for p in (ref_store, ref_run, ref_report):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    t_buffer = _run([*BUFFER, "--out", str(ref_store)])
    t_distill = _run([*DISTILL, "--store", str(ref_store), "--out", str(ref_run)])
    t_eval = _run([*EVAL, str(ref_run / "synthetic.pt"), "--out", str(ref_report)])

    victim_store, victim_run = work / "store", work / "run"
    victim_report = work / "eval" / "report.json"
    stages = {
        "buffer": lambda: stage("buffer", lambda n: [*BUFFER, "--out", str(victim_store)],
                                victim_store, _check_buffer, ref_store, a.kills, t_buffer, rng,
                                lambda p: (p / "expert_00002.npy").exists()),
        "distill": lambda: stage("distill", lambda n: [*DISTILL, "--store", str(ref_store),
                                                       "--out", str(victim_run),
                                                       *(["--resume"] if n else [])],
                                 victim_run, _check_distill, ref_run, a.kills, t_distill, rng,
                                 lambda p: (p / "synthetic.pt").exists()),
        "eval": lambda: stage("eval", lambda n: [*EVAL, str(ref_run / "synthetic.pt"), "--out",
                                                 str(victim_report)],
                              victim_report, _check_eval, ref_report, a.kills, t_eval, rng,
                              lambda p: p.exists()),
    }  # fmt: skip
    results = {k: stages[k]() for k in a.stages.split(",")}
    summary = {
        "kills_per_stage": a.kills,
        "reference_seconds": {"buffer": t_buffer, "distill": t_distill, "eval": t_eval},
        "stages": results,
        "seconds": time.perf_counter() - t0,
    }
    if a.json:
        a.json.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r["failures"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
