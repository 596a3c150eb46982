"""Guarded loading of the compiled ops (``torch.ops.mtt_fast.*``, built from csrc/).

Where they come from, first found wins:

1. a build in the per-user cache for this torch and these sources (:mod:`mtt_fast._jit`:
   ``mtt-fast build-ops``, or compiled on first use);
2. the prebuilt extension ``mtt_fast._C`` (``pip install --no-build-isolation .``);
3. otherwise none: the first use starts a build (``MTT_FAST_JIT``, see :mod:`mtt_fast._jit`)
   and this process runs the Triton and reference backends.

The package works without them: every op has a pure-PyTorch reference. ``load()`` never
raises; ``load_error()`` tells why the ops are missing. ``MTT_FAST_NO_EXT=1`` disables
them (the runtime twin of ``MTT_FAST_BUILD_EXT=0``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

_state: dict[str, object] = {
    "tried": False, "ok": False, "error": None, "origin": None, "path": None, "build": None,
}
_runs_here: dict[int, bool] = {}


def _prebuilt() -> tuple[str | None, str | None]:
    """Import ``mtt_fast._C``; ``(its path, None)`` or ``(None, why not)``."""
    try:
        from mtt_fast import _C  # registers torch.ops.mtt_fast.*

        return _C.__file__, None
    except Exception as exc:  # ImportError, or an ABI mismatch (OSError / RuntimeError)
        return None, f"mtt_fast._C: {type(exc).__name__}: {exc}"


def _prebuilt_info() -> dict | None:
    """``_C.build.json`` beside the prebuilt extension (written by setup.py), if any."""
    try:
        spec = importlib.util.find_spec("mtt_fast._C")
        if spec is None or not spec.origin:
            return None
        return json.loads(Path(spec.origin).with_name("_C.build.json").read_text())
    except (OSError, ValueError, ImportError):
        return None


def load(auto_build: bool = True) -> bool:
    """Register the compiled ops once; return whether they are registered.

    Args:
        auto_build: when none are available, start a build as ``MTT_FAST_JIT`` says
            (default ``background``); ``False`` only looks.
    """
    if _state["tried"]:
        return bool(_state["ok"])
    _state["tried"] = True
    if os.environ.get("MTT_FAST_NO_EXT", "0") == "1":
        _state["error"] = "disabled by MTT_FAST_NO_EXT=1"
        return False
    from mtt_fast import _jit

    try:
        hit = _jit.cached()
    except OSError:
        hit = None
    pre = _prebuilt_info() or {}
    # the cached build wins (it matches these sources and this torch), unless it lacks the
    # CUDA kernels that a prebuilt extension for this same torch has
    prebuilt_first = bool(hit and not hit[1].get("cuda") and pre.get("cuda")
                          and pre.get("torch") == torch.__version__)
    why = "not tried"
    for source in ("prebuilt", "cache") if prebuilt_first else ("cache", "prebuilt"):
        if source == "cache" and hit is not None:
            try:
                torch.ops.load_library(str(hit[0]))
                _state.update(ok=True, origin="cache", path=str(hit[0]), build=hit[1])
                return True
            except Exception as exc:  # a broken cache entry
                why = f"cached build {hit[0]} does not load ({type(exc).__name__}: {exc})"
        elif source == "prebuilt":
            path, why_pre = _prebuilt()
            if path is not None:
                _state.update(ok=True, origin="prebuilt", path=path, build=pre or None)
                return True
            why = why_pre
    msg = (
        f"the compiled ops are not built for this install ({why}); "
        "`mtt-fast build-ops` compiles them"
    )
    mode = os.environ.get("MTT_FAST_JIT", "background").strip().lower()
    if auto_build and mode in ("background", "sync", "1", "auto"):
        try:
            note = _jit.first_use("sync" if mode == "sync" else "background")
        except Exception as exc:  # never let a build problem break the op call
            note = f"could not start compiling the ops ({type(exc).__name__}: {exc})"
        if mode == "sync" and not note:
            hit = _jit.cached()
            if hit is not None:
                torch.ops.load_library(str(hit[0]))
                _state.update(ok=True, origin="cache", path=str(hit[0]), build=hit[1])
                return True
        if note:
            sys.stderr.write(f"mtt-fast: {note}\n")
            msg = f"{msg}; {note}"
    _state["error"] = msg
    return False


def load_error() -> str | None:
    load()
    return _state["error"]  # type: ignore[return-value]


def origin() -> dict:
    """Where the loaded ops come from: ``{"origin": "cache" | "prebuilt" | None, "path",
    "build"}`` (``build``: the build's ``build.json``, when it has one)."""
    return {k: _state[k] for k in ("origin", "path", "build")}


def registered() -> dict[str, list[str]]:
    """``{op: ["cpu", "cuda"]}``: every op of the ``mtt_fast`` namespace and the devices
    it has kernels for (empty when the ops are not loaded)."""
    if not _state["ok"]:
        return {}
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("mtt_fast::"))
    return {
        n.split("::")[1]: [
            d for d, k in (("cpu", "CPU"), ("cuda", "CUDA"))
            if torch._C._dispatch_has_kernel_for_dispatch_key(n, k)
        ]
        for n in names
    }


def cuda_archs() -> dict[str, list[str]] | None:
    """GPU code in the loaded library: ``{"sass": ["sm_80", ...], "ptx": [...]}`` or None."""
    if not _state["ok"] or not _state["path"]:
        return None
    if "fatbin" not in _state:
        from mtt_fast import _build

        _state["fatbin"] = _build.fatbin_archs(str(_state["path"]))
    return _state["fatbin"]  # type: ignore[return-value]


def _cuda_code_runs_here() -> bool:
    # A CUDA kernel is registered; does the library hold code this GPU can run (a cubin
    # of its major, or PTX not newer than it)? Unknown layouts count as yes.
    idx = torch.cuda.current_device()
    if idx not in _runs_here:
        archs = cuda_archs()
        if archs is None:
            _runs_here[idx] = True
        else:
            from mtt_fast import _build

            _runs_here[idx] = _build.runs_on(archs, torch.cuda.get_device_capability(idx))
    return _runs_here[idx]


@torch.compiler.assume_constant_result  # torch.compile: a constant, not traced (no break)
def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``torch.ops.mtt_fast.<op>`` has a kernel for ``device_type`` ('cpu'|'cuda')
    that runs here (for CUDA: code for the current GPU's architecture)."""
    if not load():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    try:
        ok = bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"mtt_fast::{op}", key))
    except RuntimeError:
        return False
    if ok and device_type == "cuda" and torch.cuda.is_available():
        return _cuda_code_runs_here()
    return ok
