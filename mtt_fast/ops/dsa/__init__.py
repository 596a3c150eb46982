"""DSA ops with backend dispatch (see :mod:`mtt_fast.backends`).

Each function here has the signature of its twin in :mod:`.reference` plus
``backend: str | None``. ``native`` is the compiled ``torch.ops.mtt_fast`` op (``.native``),
``triton`` the Triton kernels (``.triton``); both come with a fused backward.
"""

from __future__ import annotations

import importlib

import torch

from mtt_fast import backends
from mtt_fast.ops.dsa import reference

OPS = ("affine", "flip", "crop", "cutout", "color")


def _impl(name: str, x: torch.Tensor, backend: str | None):
    which = backends.resolve("dsa", backend, x.device)
    backends.last_used["dsa"] = which
    if which == "torch":
        return getattr(reference, name)
    mod = importlib.import_module(f"mtt_fast.ops.dsa.{which}")
    return getattr(mod, name)


def affine(x: torch.Tensor, theta: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    return _impl("affine", x, backend)(x, theta)


def flip(x: torch.Tensor, mask: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    return _impl("flip", x, backend)(x, mask)


def crop(x: torch.Tensor, shift: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    return _impl("crop", x, backend)(x, shift)


def cutout(
    x: torch.Tensor, center: torch.Tensor, size: tuple[int, int], backend: str | None = None
) -> torch.Tensor:
    return _impl("cutout", x, backend)(x, center, size)


def color(
    x: torch.Tensor,
    brightness: torch.Tensor,
    saturation: torch.Tensor,
    contrast: torch.Tensor,
    backend: str | None = None,
) -> torch.Tensor:
    return _impl("color", x, backend)(x, brightness, saturation, contrast)
