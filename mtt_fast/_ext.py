"""Guarded loading of the compiled extension ``mtt_fast._C`` (csrc/).

The package works without it: every op has a pure-PyTorch reference. ``load()`` never
raises; ``load_error()`` tells why the extension is missing.
"""

from __future__ import annotations

import os

import torch

_state: dict[str, object] = {"tried": False, "ok": False, "error": None}


def load() -> bool:
    """Import the compiled ops once; return whether they are registered."""
    if _state["tried"]:
        return bool(_state["ok"])
    _state["tried"] = True
    if os.environ.get("MTT_FAST_NO_EXT", "0") == "1":
        _state["error"] = "disabled by MTT_FAST_NO_EXT=1"
        return False
    try:
        from mtt_fast import _C  # noqa: F401  (registers torch.ops.mtt_fast.*)

        _state["ok"] = True
    except Exception as exc:  # ImportError, or an ABI mismatch (OSError / RuntimeError)
        _state["error"] = (
            f"compiled extension mtt_fast._C is not available ({type(exc).__name__}: {exc}); "
            "reinstall with `pip install --no-build-isolation .` and MTT_FAST_BUILD_EXT unset "
            "to build it"
        )
    return bool(_state["ok"])


def load_error() -> str | None:
    load()
    return _state["error"]  # type: ignore[return-value]


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``torch.ops.mtt_fast.<op>`` has a kernel for ``device_type`` ('cpu'|'cuda')."""
    if not load():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"mtt_fast::{op}", key))
    except RuntimeError:
        return False
