"""Writing a benchmark's JSON under ``benchmarks/results/`` section by section.

A run of some of a file's tests (``-k``) must not drop the sections the others wrote on the
same CPU; sections measured on another CPU are dropped (ratios are compared within one
machine only)."""

from __future__ import annotations

import json
from pathlib import Path

from mtt_fast.pipeline import versions


def write_sections(path: Path, header: dict, sections: dict) -> None:
    """Write ``header`` (plus ``versions``) and ``sections`` to ``path``, keeping the
    sections of an existing file from the same CPU that ``sections`` does not replace."""
    ver = versions()
    kept: dict = {}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("versions", {}).get("cpu") == ver.get("cpu"):
            kept = {k: v for k, v in old.items() if isinstance(v, dict) and k != "versions"}
    path.write_text(json.dumps({**header, "versions": ver, **kept, **sections}, indent=1))
