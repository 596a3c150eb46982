"""A functional view of a model over ONE flat parameter vector.

Replaces the original's ``ReparamModule``: the parameters of a model are the consecutive
slices of a 1-D tensor ``flat (P,)`` in ``model.named_parameters()`` order (the order of
the original replay buffers), and :func:`functional_forward` runs the model with them
through ``torch.func.functional_call``. Everything is differentiable with respect to
``flat`` and the inputs, to any order (double backward included), because the slices are
plain views of ``flat``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a model's parameters, in ``named_parameters()`` order.

    Attributes:
        names: parameter names, e.g. ``("features.0.weight", ...)``.
        shapes: one shape tuple per name.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        shapes = tuple(tuple(int(d) for d in s) for s in self.shapes)
        if len(names) != len(shapes):
            raise ValueError(f"ParamLayout: {len(names)} names but {len(shapes)} shapes")
        if len(set(names)) != len(names):
            raise ValueError(f"ParamLayout: duplicate parameter names in {names}")
        for n, s in zip(names, shapes):
            if any(d < 0 for d in s):
                raise ValueError(f"ParamLayout: negative size in shape {s} of {n!r}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "shapes", shapes)

    @property
    def numels(self) -> tuple[int, ...]:
        """Number of elements of each parameter."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def num_params(self) -> int:
        """Total number of scalars P (the length of a flat vector)."""
        return sum(self.numels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"names": [...], "shapes": [[...], ...]}``."""
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParamLayout:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]))
        except KeyError as e:
            raise ValueError(f"ParamLayout.from_dict: missing key {e} in {sorted(d)}") from None


def layout(model: nn.Module) -> ParamLayout:
    """The :class:`ParamLayout` of ``model`` (``model.named_parameters()`` order)."""
    named = list(model.named_parameters())
    return ParamLayout(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))


_model_layout = layout  # the public name is shadowed by the ``layout`` arguments below


def _check_flat(flat: torch.Tensor, lay: ParamLayout) -> None:
    if not isinstance(flat, torch.Tensor) or flat.dim() != 1:
        shape = tuple(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
        raise ValueError(f"flat parameters must be a 1-D tensor (P,), got {shape}")
    if flat.numel() != lay.num_params:
        raise ValueError(
            f"flat parameter vector has the wrong length: expected {lay.num_params} "
            f"({len(lay.names)} tensors), got {flat.numel()}"
        )


def flatten(model: nn.Module) -> torch.Tensor:
    """Concatenate the parameters of ``model`` into one vector.

    Args:
        model: any module.

    Returns:
        ``(P,)`` float32, a detached copy, on the parameters' device (CPU if none).
    """
    params = [p.detach().reshape(-1).to(torch.float32) for p in model.parameters()]
    if not params:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat(params)


def unflatten(flat: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
    """Split a flat vector into named parameter tensors.

    Args:
        flat: ``(P,)`` with ``P == layout.num_params``.
        layout: the layout.

    Returns:
        ``{name: view of flat with that parameter's shape}``, in layout order; the views
        share memory with ``flat`` and are differentiable with respect to it.

    Raises:
        ValueError: ``flat`` is not 1-D or has the wrong length.
    """
    _check_flat(flat, layout)
    chunks = torch.split(flat, layout.numels) if layout.names else ()
    return {n: c.view(s) for n, s, c in zip(layout.names, layout.shapes, chunks)}


def load_flat(model: nn.Module, flat: torch.Tensor) -> nn.Module:
    """Copy a flat vector into the model's parameters (in place, no autograd).

    Args:
        model: the module to overwrite.
        flat: ``(P,)``; cast to each parameter's dtype and device.

    Returns:
        ``model``.

    Raises:
        ValueError: ``flat`` is not 1-D or has the wrong length for ``model``.
    """
    pieces = unflatten(flat.detach(), _model_layout(model))
    with torch.no_grad():
        for (_, p), v in zip(model.named_parameters(), pieces.values()):
            p.copy_(v)
    return model


def functional_forward(
    model: nn.Module,
    flat: torch.Tensor,
    x: torch.Tensor,
    layout: ParamLayout | None = None,
) -> torch.Tensor:
    """Run ``model`` on ``x`` with the parameters taken from ``flat``.

    Buffers (e.g. BatchNorm running statistics) are the model's own; in train mode they
    are updated as in an ordinary forward. The model's own parameters are not used.

    Args:
        model: the architecture.
        flat: ``(P,)`` parameters in ``named_parameters()`` order; same dtype as ``x``.
        x: ``(N, C, H, W)`` inputs.
        layout: the model's layout, to skip recomputing it on every call (optional).

    Returns:
        ``(N, K)`` logits, differentiable (to any order) with respect to ``flat`` and ``x``.

    Raises:
        ValueError: ``flat`` is not 1-D or has the wrong length.
    """
    params = unflatten(flat, _model_layout(model) if layout is None else layout)
    return functional_call(model, params, (x,))
