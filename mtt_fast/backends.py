"""The one dispatcher of the kernel ops: a registry of ops and their backends.

An op (``dsa``, ``zca``, ...) lives in ``mtt_fast/ops/<op>/`` and declares itself once,
when that package is imported, with :func:`register`::

    backends.register(
        "dsa",
        backends.Backend("native", "mtt_fast.ops.dsa.native", FLOAT32_64,
                         runtime=backends.compiled("dsa_affine")),
        backends.Backend("triton", "mtt_fast.ops.dsa.triton", FLOATS,
                         runtime=backends.triton_runtime, auto_devices=("cuda",)),
        backends.Backend("torch", "mtt_fast.ops.dsa.reference", FLOATS),
    )

Each :class:`Backend` names the module holding its *launchers* (plain functions on tensors,
imported on first use), the input dtypes it computes to the op's specification, the
devices it can run on now (``runtime``) and the devices ``auto`` may pick it for. Nothing
here knows any op by name: a new op plugs in by registering, and :func:`report` finds it
by importing every package under :mod:`mtt_fast.ops`.

Order of precedence for one call: the explicit ``backend=`` argument, then the
``MTT_FAST_BACKEND`` environment variable, then ``auto``. ``auto`` takes the first backend,
in the op's declared order, that runs on the tensor's device, supports its dtype and may be
picked implicitly there (Triton on CPU tensors is the interpreter: never implicit). With
the declarations of ``dsa`` and ``zca`` that is

* CUDA tensors: compiled CUDA op ("native") -> Triton -> reference ("torch");
* CPU tensors: compiled CPU op ("native") -> reference;

skipping a backend that does not take the dtype (``float16`` DSA images go to Triton on a
GPU and to the reference on CPU, never to the float32/float64-only compiled op). An
explicit request (argument or environment) for a backend that is unknown, missing or does
not take the dtype raises a one-line ``ValueError`` that lists the backends available for
that op, device and dtype.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from mtt_fast import _ext

__all__ = [
    "NAMES",
    "Backend",
    "available",
    "compiled",
    "dispatch",
    "dtypes",
    "last_used",
    "launchers",
    "ops",
    "register",
    "report",
    "resolve",
    "select",
    "torch_runtime",
    "triton_importable",
    "triton_interpret",
    "triton_runtime",
]

NAMES = ("torch", "native", "triton")
_ALIASES = {"reference": "torch"}
ENV = "MTT_FAST_BACKEND"

# op name -> the backend that served its latest call; read by the routing tests.
last_used: dict[str, str] = {}

Runtime = Callable[[str], "str | None"]


# ----------------------------------------------------------------------------- runtimes


@functools.cache
def triton_importable() -> bool:
    # cached: resolve() runs on every op call, and an uncached find_spec scans sys.path
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def torch_runtime(device_type: str) -> str | None:
    """Plain PyTorch runs wherever torch does."""
    return None


def triton_runtime(device_type: str) -> str | None:
    """``None`` when Triton kernels can run on ``device_type`` tensors, else why not."""
    if not triton_importable():
        return "triton is not installed"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA GPU is visible"
    if device_type == "cpu":
        return None if triton_interpret() else "Triton runs on CPU tensors only with TRITON_INTERPRET=1"
    return f"Triton does not run on {device_type} tensors"


def compiled(probe: str) -> Runtime:
    """Runtime of a compiled backend: ``torch.ops.mtt_fast.<probe>`` has a kernel for the
    device (the extension is loaded on the first query, never at import)."""

    def runtime(device_type: str) -> str | None:
        if _ext.has_kernel(probe, device_type):
            return None
        return _ext.load_error() or f"mtt_fast._C has no {device_type} kernel for {probe}"

    return runtime


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Backend:
    """One implementation of an op.

    Attributes:
        name: ``"torch"`` (the reference), ``"native"`` (compiled ``csrc/`` op) or
            ``"triton"``.
        module: import path of the launchers module (imported on first use).
        dtypes: input dtypes it computes to the op's specification; others are never
            routed to it.
        runtime: ``device_type -> None`` if it can run there now, else the reason.
        auto_devices: device types ``auto`` may pick it for (``None``: any it runs on).
    """

    name: str
    module: str
    dtypes: frozenset
    runtime: Runtime = torch_runtime
    auto_devices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise ValueError(f"Backend.name must be one of {', '.join(NAMES)}, got {self.name!r}")
        object.__setattr__(self, "dtypes", frozenset(self.dtypes))


_REGISTRY: dict[str, tuple[Backend, ...]] = {}
_MODULES: dict[str, ModuleType] = {}


def register(op: str, *backends: Backend) -> None:
    """Declare ``op`` with its backends, best first for ``auto`` (re-registering replaces)."""
    names = [b.name for b in backends]
    if not backends or len(set(names)) != len(names):
        raise ValueError(f"register({op!r}): expected distinct backends, got {names}")
    _REGISTRY[op] = tuple(backends)


def _backends(op: str) -> tuple[Backend, ...]:
    if op not in _REGISTRY:  # declared when its package is imported
        try:
            importlib.import_module(f"mtt_fast.ops.{op}")
        except ModuleNotFoundError:
            pass
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; registered: {', '.join(ops()) or 'none'}")
    return _REGISTRY[op]


def ops() -> tuple[str, ...]:
    """Every registered op, after importing each package under :mod:`mtt_fast.ops`."""
    import mtt_fast.ops as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.ispkg and info.name not in _REGISTRY:
            importlib.import_module(f"mtt_fast.ops.{info.name}")
    return tuple(_REGISTRY)


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtypes(op: str, backend: str) -> tuple[torch.dtype, ...]:
    """The input dtypes ``backend`` takes for ``op``, in a stable order."""
    for b in _backends(op):
        if b.name == backend:
            return tuple(sorted(b.dtypes, key=_dtype_name))
    raise ValueError(f"op {op!r} has no backend {backend!r}")


def available(
    op: str, device: torch.device | str, dtype: torch.dtype | None = None
) -> list[str]:
    """Backends that can run ``op`` on ``device`` tensors (of ``dtype`` when given), in
    the op's order of preference. Triton on CPU is listed under ``TRITON_INTERPRET=1``
    though ``auto`` never picks it there."""
    dt = _device_type(device)
    return [
        b.name
        for b in _backends(op)
        if (dtype is None or dtype in b.dtypes) and b.runtime(dt) is None
    ]


def resolve(
    op: str,
    backend: str | None,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
) -> str:
    """Pick the backend for one call of ``op`` on ``device`` / ``dtype`` tensors.

    Args:
        op: a registered op.
        backend: ``None`` (read ``MTT_FAST_BACKEND``, default auto), ``"auto"``, a backend
            name, or ``"reference"`` (alias of ``"torch"``).
        device: the device of the op's tensors.
        dtype: the input dtype (``None``: any).

    Returns:
        The backend name.

    Raises:
        ValueError: unknown op or backend, or an explicit backend that cannot run here.
    """
    source = ""
    choice = backend
    if choice is None:
        choice = os.environ.get(ENV) or "auto"
        source = f" (from {ENV})" if choice != "auto" else ""
    choice = str(choice).lower()
    choice = _ALIASES.get(choice, choice)
    dt = _device_type(device)
    impls = _backends(op)
    where = f"{dt} {_dtype_name(dtype)}" if dtype is not None else dt
    if choice == "auto":
        for b in impls:
            implicit = b.auto_devices is None or dt in b.auto_devices
            if implicit and (dtype is None or dtype in b.dtypes) and b.runtime(dt) is None:
                return b.name
        raise ValueError(
            f"no backend of op {op!r} runs on {where} tensors; "
            f"declared: {', '.join(b.name for b in impls)}"
        )
    names = [b.name for b in impls]
    if choice not in names:
        known = ", ".join(["auto", *names])
        raise ValueError(f"unknown backend {choice!r}{source} for op {op!r}; choose one of {known}")
    b = impls[names.index(choice)]
    why = b.runtime(dt)
    if why is None and dtype is not None and dtype not in b.dtypes:
        why = f"it takes {', '.join(map(_dtype_name, dtypes(op, choice)))}"
    if why is not None:
        avail = ", ".join(available(op, dt, dtype)) or "none"
        raise ValueError(
            f"backend {choice!r}{source} is not available for op {op!r} on {where} tensors "
            f"({why}); available: {avail}"
        )
    return choice


def _import(module: str) -> ModuleType:
    """``module``, imported once."""
    mod = _MODULES.get(module)
    if mod is None:
        mod = _MODULES[module] = importlib.import_module(module)
    return mod


@torch._dynamo.assume_constant_result  # run when dynamo traces, never traced into
def _imported(module: str) -> str:
    _import(module)
    return module


def _traced_import(module: str) -> ModuleType:
    """:func:`_import` in a form ``torch.compile(fullgraph=True)`` traces without a break:
    dynamo cannot trace ``importlib.import_module`` (nor see a dict that changed while it
    traced), so the import runs at trace time as a constant-result call and the module is
    then reached by attributes from its top-level package (live, and guarded)."""
    top, *parts = _imported(module).split(".")
    mod = sys.modules[top]
    for part in parts:
        mod = getattr(mod, part)
    return mod


def launchers(op: str, backend: str) -> ModuleType:
    """The launchers module of ``backend`` for ``op`` (imported once)."""
    for b in _backends(op):
        if b.name == backend:
            return _traced_import(b.module) if torch.compiler.is_compiling() else _import(b.module)
    raise ValueError(f"op {op!r} has no backend {backend!r}")


def select(op: str, backend: str | None, x: torch.Tensor) -> str:
    """Resolve the backend for ``op`` on ``x``'s device and dtype, record it in
    :data:`last_used` and return its name."""
    name = resolve(op, backend, x.device, x.dtype)
    last_used[op] = name
    return name


def dispatch(op: str, backend: str | None, x: torch.Tensor) -> ModuleType:
    """:func:`select`, then the launchers module of the backend it picked."""
    return launchers(op, select(op, backend, x))


def report() -> dict[str, dict[str, list[str]]]:
    """``{op: {device_type: [available backends]}}`` for ``mtt-fast info`` (best first)."""
    devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {op: {d: available(op, d) for d in devs} for op in ops()}
