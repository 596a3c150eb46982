"""Launchers of the ``native`` DSA backend: the compiled ``torch.ops.mtt_fast.dsa_*`` ops
(``csrc/``; CPU: OpenMP over the batch, CUDA: ``csrc/cuda/dsa_kernels.cu``).

Plain functions on tensors: :mod:`mtt_fast.ops.dsa` validates the arguments, wraps these
in its autograd Function and calls them with contiguous float32 / float64 images,
parameters on the images' device, and ``size`` as python ints. Signatures are those of
:mod:`mtt_fast.ops.dsa.reference`.

Importing this module never fails: without the extension every launcher raises a
``RuntimeError`` that says why it is missing (:func:`mtt_fast._ext.load_error`). When the
extension is loaded, importing it registers the fake (meta) kernels of the ops, for
``torch.compile`` and ``torch.library.opcheck``, and their autograd formulas (the Function's:
gradient to the images only, the adjoint op, differentiable again), so that the raw ops,
hence these launchers, are differentiable wherever they are called, traced graphs included.
"""

from __future__ import annotations

import torch

from mtt_fast import _ext

__all__ = [
    "affine",
    "affine_adjoint",
    "flip",
    "crop",
    "crop_adjoint",
    "cutout",
    "color",
    "color_adjoint",
    "available",
]

OPS = (
    "dsa_affine",
    "dsa_affine_backward",
    "dsa_flip",
    "dsa_crop",
    "dsa_cutout",
    "dsa_color",
    "dsa_color_backward",
)


def available() -> bool:
    """Whether the compiled DSA ops are registered."""
    return _ext.load()


def _ops():
    if not _ext.load():
        raise RuntimeError(f"mtt_fast native DSA ops are unavailable: {_ext.load_error()}")
    return torch.ops.mtt_fast


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling on ``theta: (B, 2, 3)``; ``x: (B, C, H, W)`` -> (B, C, H, W)."""
    return _ops().dsa_affine(x, theta)


def affine_adjoint(g: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Transpose of :func:`affine` in ``x`` (a scatter of the bilinear weights)."""
    return _ops().dsa_affine_backward(g, theta)


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip along W where ``mask: (B,)`` bool; its own adjoint."""
    return _ops().dsa_flip(x, mask)


def crop(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Integer translation by ``shift: (B, 2)`` int64 with zero border."""
    return _ops().dsa_crop(x, shift)


def crop_adjoint(g: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Transpose of :func:`crop`: the crop by ``-shift``."""
    return _ops().dsa_crop(g, -shift)


def cutout(x: torch.Tensor, center: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero a ``size = (h, w)`` square at ``center: (B, 2)`` int64; its own adjoint."""
    return _ops().dsa_cutout(x, center, size[0], size[1])


def color(
    x: torch.Tensor, brightness: torch.Tensor, saturation: torch.Tensor, contrast: torch.Tensor
) -> torch.Tensor:
    """Brightness, saturation, contrast (each (B,)) in one fused op."""
    return _ops().dsa_color(x, brightness, saturation, contrast)


def color_adjoint(
    g: torch.Tensor, brightness: torch.Tensor, saturation: torch.Tensor, contrast: torch.Tensor
) -> torch.Tensor:
    """Transpose of the (self-adjoint) linear part of :func:`color`."""
    return _ops().dsa_color_backward(g, saturation, contrast)


def _register_fakes() -> None:
    def like_first(x, *args):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    for name in OPS:
        torch.library.register_fake(f"mtt_fast::{name}")(like_first)


# Each compiled op is affine in its first argument and its backward is the adjoint op,
# called through the dispatcher so that it is differentiable again (the adjoint's own
# backward is the op's linear part): the formulas of the autograd Function of
# :mod:`mtt_fast.ops.dsa` (whose launchers are those below). Entry: op -> (adjoint op,
# indices of the op's inputs that the adjoint takes after the gradient).
_ADJOINT_OPS = {
    "dsa_affine": ("dsa_affine_backward", (1,)),
    "dsa_affine_backward": ("dsa_affine", (1,)),
    "dsa_flip": ("dsa_flip", (1,)),  # its own adjoint
    "dsa_crop": ("dsa_crop", (1,)),  # adjoint: the crop by -shift
    "dsa_cutout": ("dsa_cutout", (1, 2, 3)),  # its own adjoint
    "dsa_color": ("dsa_color_backward", (2, 3)),
    "dsa_color_backward": ("dsa_color_backward", (1, 2)),  # self-adjoint
}


def _register_autograd() -> None:
    """Register the backward of every compiled DSA op, so that ``torch.ops.mtt_fast.dsa_*``
    (hence these launchers) is differentiable wherever it is called: eagerly, and in the
    graphs that ``torch.compile`` / AOTAutograd trace, which hold the ops themselves.
    Gradients go to the first (images / gradient) argument only; the parameters get
    ``None``."""
    for name, (adjoint, keep) in _ADJOINT_OPS.items():
        n_inputs = len(getattr(torch.ops.mtt_fast, name).default._schema.arguments)

        def setup_context(ctx, inputs, output, name=name, keep=keep):
            args = [inputs[i] for i in keep]
            if name == "dsa_crop":
                args[0] = -args[0]
            ctx.slots = tuple(None if torch.is_tensor(a) else a for a in args)
            ctx.save_for_backward(*(a for a in args if torch.is_tensor(a)))
            ctx.x_dtype = inputs[0].dtype

        def backward(ctx, grad, adjoint=adjoint, n_inputs=n_inputs):
            gx = None
            if ctx.needs_input_grad[0]:
                saved = iter(ctx.saved_tensors)
                args = [next(saved) if s is None else s for s in ctx.slots]
                g = grad.to(ctx.x_dtype).contiguous()
                gx = getattr(torch.ops.mtt_fast, adjoint)(g, *args)
            return (gx,) + (None,) * (n_inputs - 1)

        torch.library.register_autograd(f"mtt_fast::{name}", backward, setup_context=setup_context)


if _ext.load():
    _register_fakes()
    _register_autograd()
