"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) as used by MTT.

Sampling is split from applying::

    params = sample(batch_size, strategy, generator=g, mode="S")   # random draws only
    out = apply(images, params)                                    # pure and replayable

``apply`` with the same ``params`` gives bit-identical output, which the checkpointed
matching gradient relies on (each student step's augmentation is replayed in the
backward sweep, never resampled).

Groups of the strategy string (``color_crop_cutout_flip_scale_rotate``): ``color``
(brightness, saturation, contrast), ``crop``, ``cutout``, ``flip``, ``scale``, ``rotate``.
Mode ``'S'`` applies one group, chosen at random per batch; ``'M'`` applies all in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mtt_fast.ops import dsa as _ops

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")

__all__ = [
    "DEFAULT_STRATEGY",
    "GROUPS",
    "DSAConfig",
    "DSAParams",
    "sample",
    "apply",
    "resolve",
    "augment",
    "parse_strategy",
]


@dataclass(frozen=True)
class DSAConfig:
    """The original ``ParamDiffAug`` magnitudes (defaults as in the MTT code)."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    def __post_init__(self) -> None:
        for k, v in self.__dict__.items():
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"DSAConfig.{k} must be finite and >= 0, got {v!r}")
        if self.ratio_scale < 1:
            raise ValueError(f"DSAConfig.ratio_scale must be >= 1, got {self.ratio_scale!r}")
        if not 0 <= self.prob_flip <= 1:
            raise ValueError(f"DSAConfig.prob_flip must be in [0, 1], got {self.prob_flip!r}")


@dataclass(frozen=True)
class DSAParams:
    """Sampled augmentation parameters for one batch.

    Attributes:
        ops: ``((op_name, {name: tensor}), ...)`` in application order. Op names are those
            of :mod:`mtt_fast.ops.dsa`; ``crop`` and ``cutout`` hold uniforms ``u: (B, 2)``
            that :func:`resolve` turns into integer pixel positions for a given image size.
        batch_size: B.
        strategy, mode: what was sampled.
    """

    ops: tuple[tuple[str, dict], ...]
    batch_size: int
    strategy: str = DEFAULT_STRATEGY
    mode: str = "S"
    config: DSAConfig = field(default_factory=DSAConfig)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DSAParams:
        """A copy with every tensor on ``device``."""
        ops = tuple(
            (
                name,
                {
                    k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v)
                    for k, v in args.items()
                },
            )
            for name, args in self.ops
        )
        return DSAParams(ops, self.batch_size, self.strategy, self.mode, self.config)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.ops)


def parse_strategy(strategy: str | None) -> tuple[str, ...]:
    """Split ``'color_crop_...'`` into groups; ``None``/``''``/``'none'`` gives ``()``."""
    if strategy is None or strategy.lower() in ("", "none"):
        return ()
    groups = tuple(strategy.split("_"))
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ValueError(
            f"unknown DSA group(s) {bad} in strategy {strategy!r}; known groups: {', '.join(GROUPS)}"
        )
    return groups


def _rand(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=gdev, dtype=torch.float32).to(device)


def _sample_group(group: str, B: int, cfg: DSAConfig, g, device, same: bool) -> list:
    n = 1 if same else B

    def r() -> torch.Tensor:
        t = _rand(n, g, device)
        return t.expand(B).contiguous() if same else t

    if group == "scale":
        lo, hi = 1.0 / cfg.ratio_scale, cfg.ratio_scale
        sx = r() * (hi - lo) + lo
        sy = r() * (hi - lo) + lo
        z = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)
        return [("affine", {"theta": theta, "kind": "scale"})]
    if group == "rotate":
        ang = (r() - 0.5) * 2 * cfg.ratio_rotate / 180 * math.pi
        c, s, z = torch.cos(ang), torch.sin(ang), torch.zeros_like(ang)
        theta = torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1)
        return [("affine", {"theta": theta, "kind": "rotate"})]
    if group == "flip":
        return [("flip", {"mask": r() < cfg.prob_flip})]
    if group == "color":
        b = (r() - 0.5) * cfg.brightness
        s = r() * cfg.saturation
        c = r() + cfg.contrast
        return [("color", {"brightness": b, "saturation": s, "contrast": c})]
    if group == "crop":
        return [("crop", {"u": torch.stack([r(), r()], 1), "ratio": cfg.ratio_crop_pad})]
    if group == "cutout":
        return [("cutout", {"u": torch.stack([r(), r()], 1), "ratio": cfg.ratio_cutout})]
    raise AssertionError(group)


def sample(
    batch_size: int,
    strategy: str = DEFAULT_STRATEGY,
    generator: torch.Generator | None = None,
    mode: str = "S",
    device: torch.device | str | None = None,
    config: DSAConfig | None = None,
    host_generator: torch.Generator | None = None,
    same_across_batch: bool = False,
) -> DSAParams:
    """Draw DSA parameters for one batch.

    Args:
        batch_size: B, the number of images the params will be applied to.
        strategy: groups joined by ``_`` (default ``color_crop_cutout_flip_scale_rotate``).
        generator: source of the per-sample draws (any device); ``None`` uses torch's
            global RNG.
        mode: ``'S'`` (one random group per batch, the MTT default) or ``'M'`` (all).
        device: where the parameter tensors live (default: the generator's device).
        config: magnitudes (default :class:`DSAConfig`).
        host_generator: CPU generator for the ``'S'``-mode group choice, which must be known
            on the host; defaults to ``generator`` when that is a CPU generator. A
            device generator never has to be synchronised with the host.
        same_across_batch: one draw for the whole batch (the original's ``batchmode``).

    Returns:
        :class:`DSAParams`.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if mode not in ("S", "M"):
        raise ValueError(f"mode must be 'S' or 'M', got {mode!r}")
    cfg = config or DSAConfig()
    groups = parse_strategy(strategy)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if mode == "S" and len(groups) > 1:
        hg = host_generator
        if hg is None and (generator is None or generator.device.type == "cpu"):
            hg = generator
        if hg is not None and hg.device.type != "cpu":
            raise ValueError("host_generator must be a CPU torch.Generator")
        k = int(torch.randint(len(groups), (1,), generator=hg))  # host-side draw
        groups = (groups[k],)
    ops: list = []
    for gname in groups:
        ops += _sample_group(gname, batch_size, cfg, generator, device, same_across_batch)
    return DSAParams(tuple(ops), batch_size, strategy or "none", mode, cfg)


def _uniform_to_int(u: torch.Tensor, n: int) -> torch.Tensor:
    # floor(u * n) in [0, n - 1]; the clamp guards u * n rounding up to n in float32.
    return (u * n).floor().to(torch.int64).clamp_(0, n - 1)


def resolve(params: DSAParams, H: int, W: int) -> list[tuple[str, dict]]:
    """Turn ``params`` into concrete op arguments for ``(H, W)`` images.

    ``crop``: shift ``(dy, dx)`` uniform in ``[-s, s]`` with ``s = int(H * ratio + 0.5)``
    (resp. W), as ``torch.randint(-s, s + 1)`` in the original. ``cutout``: square
    ``h = int(H * ratio + 0.5)`` (resp. ``w``), centre uniform in ``[0, H + (1 - h % 2))``.
    """
    out = []
    for name, a in params.ops:
        if name == "crop":
            sy, sx = int(H * a["ratio"] + 0.5), int(W * a["ratio"] + 0.5)
            dy = _uniform_to_int(a["u"][:, 0], 2 * sy + 1) - sy
            dx = _uniform_to_int(a["u"][:, 1], 2 * sx + 1) - sx
            out.append(("crop", {"shift": torch.stack([dy, dx], 1)}))
        elif name == "cutout":
            h, w = int(H * a["ratio"] + 0.5), int(W * a["ratio"] + 0.5)
            cy = _uniform_to_int(a["u"][:, 0], H + (1 - h % 2))
            cx = _uniform_to_int(a["u"][:, 1], W + (1 - w % 2))
            out.append(("cutout", {"center": torch.stack([cy, cx], 1), "size": (h, w)}))
        elif name == "affine":
            out.append(("affine", {"theta": a["theta"]}))
        else:
            out.append((name, a))
    return out


def apply(images: torch.Tensor, params: DSAParams, backend: str | None = None) -> torch.Tensor:
    """Apply sampled DSA ``params`` to ``images``; pure, differentiable and replayable.

    Args:
        images: (B, C, H, W) float, B equal to ``params.batch_size``.
        params: from :func:`sample`.
        backend: ``"auto"`` | ``"torch"`` (reference) | ``"native"`` | ``"triton"``;
            ``None`` (default) reads ``MTT_FAST_BACKEND``, else auto.

    Returns:
        (B, C, H, W) augmented images, dtype of ``images``. The gradient flows to the images
        only (differentiable to any order); the params are constants on every backend
        (see :mod:`mtt_fast.ops.dsa`).
    """
    if not torch.is_tensor(images) or images.dim() != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"DSA apply expects images of shape (B, C, H, W), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"DSA apply expects float images, got dtype {images.dtype}")
    if images.shape[0] != params.batch_size:
        raise ValueError(
            f"DSA params were sampled for batch {params.batch_size}, images have batch "
            f"{images.shape[0]}"
        )
    H, W = images.shape[-2:]
    x = images
    for name, a in resolve(params, H, W):
        x = getattr(_ops, name)(x, **_to_device(a, x.device), backend=backend)
    return x


def _to_device(a: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in a.items()}


def augment(
    images: torch.Tensor,
    strategy: str = DEFAULT_STRATEGY,
    generator: torch.Generator | None = None,
    mode: str = "S",
    backend: str | None = None,
    config: DSAConfig | None = None,
) -> torch.Tensor:
    """Sample and apply in one call (the original ``DiffAugment``)."""
    if not parse_strategy(strategy):
        return images
    p = sample(images.shape[0], strategy, generator, mode, images.device, config)
    return apply(images, p, backend)
