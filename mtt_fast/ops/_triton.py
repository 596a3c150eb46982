"""The one place the Triton backends import ``triton``.

Importing this never fails and never touches a GPU: without triton, ``triton`` and ``tl``
are None, ``jit`` leaves kernels as plain (never launched) functions and ``IMPORT_ERROR``
holds the reason, which each backend's launchers raise as a one-line ``RuntimeError``. On
CPU tensors Triton kernels run only under its interpreter (``TRITON_INTERPRET=1`` set
before triton is imported).
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    jit = triton.jit
    IMPORT_ERROR: Exception | None = None
except ImportError as _exc:  # pragma: no cover - exercised only without triton
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    IMPORT_ERROR = _exc

    def jit(fn):  # kernels stay plain (never launched) functions
        return fn


__all__ = ["triton", "tl", "jit", "IMPORT_ERROR", "available"]


def available() -> bool:
    """Whether triton imported (the kernels still need a GPU or ``TRITON_INTERPRET=1``)."""
    return IMPORT_ERROR is None
