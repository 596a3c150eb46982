"""Backend selection for the kernel ops (``dsa``, ``zca``, ``norm_block``).

Order of precedence for one call: the explicit ``backend=`` argument, then the
``MTT_FAST_BACKEND`` environment variable, then ``auto``:

* CUDA tensors: compiled CUDA op ("native") -> Triton -> reference ("torch");
* CPU tensors: compiled CPU op ("native") -> reference.

Triton runs on CPU tensors only under ``TRITON_INTERPRET=1`` (how CI tests it); ``auto``
never picks Triton for CPU tensors. An explicit request for a backend that is not
available raises ``ValueError`` listing the ones that are.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from mtt_fast import _ext

NAMES = ("torch", "native", "triton")
# op name -> the backend that served its latest call; read by the routing tests.
last_used: dict[str, str] = {}
# op name -> a compiled op it needs (torch.ops.mtt_fast.<name>) to count as "native"
_NATIVE_PROBE = {"dsa": "dsa_affine", "zca": "zca_apply", "norm_block": "norm_block_forward"}


def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_ok(device_type: str) -> bool:
    if not triton_importable():
        return False
    if device_type == "cuda":
        return torch.cuda.is_available()
    return device_type == "cpu" and triton_interpret()


def _native_ok(op: str, device_type: str) -> bool:
    probe = _NATIVE_PROBE.get(op)
    return probe is not None and _ext.has_kernel(probe, device_type)


def available(op: str, device: torch.device | str) -> list[str]:
    """Backends that can run ``op`` on tensors of ``device``, best first for ``auto``."""
    dt = torch.device(device).type
    out = []
    if _native_ok(op, dt):
        out.append("native")
    if _triton_ok(dt):
        out.append("triton")
    out.append("torch")
    return out


def resolve(op: str, backend: str | None, device: torch.device | str) -> str:
    """Pick the backend for one call of ``op`` on ``device``; see the module docstring."""
    choice = backend if backend is not None else os.environ.get("MTT_FAST_BACKEND", "auto")
    choice = (choice or "auto").lower()
    if choice == "reference":
        choice = "torch"
    dt = torch.device(device).type
    avail = available(op, dt)
    if choice == "auto":
        if dt == "cpu":  # Triton on CPU is the (slow) interpreter: never chosen implicitly
            return "native" if "native" in avail else "torch"
        return avail[0]
    if choice not in NAMES:
        raise ValueError(
            f"unknown backend {choice!r} for op {op!r}; choose one of auto, {', '.join(NAMES)}"
        )
    if choice not in avail:
        why = ""
        if choice == "native":
            why = f" ({_ext.load_error() or 'no kernel for this device'})"
        elif choice == "triton" and dt == "cpu":
            why = " (Triton runs on CPU tensors only with TRITON_INTERPRET=1)"
        elif choice == "triton":
            why = " (triton is not installed or no GPU is visible)"
        raise ValueError(
            f"backend {choice!r} is not available for op {op!r} on {dt} tensors{why}; "
            f"available: {', '.join(avail)}"
        )
    return choice


def report() -> dict[str, dict[str, list[str]]]:
    """``{op: {device_type: [available backends]}}`` for ``mtt-fast info``."""
    devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {op: {d: available(op, d) for d in devs} for op in _NATIVE_PROBE}
