"""Build networks by the original MTT / DC-bench names (``utils.get_network``), and again
from their JSON spec (:func:`model_spec` -> :func:`from_spec`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from mtt_fast.models.networks import (
    MLP,
    VGG,
    AlexNet,
    ConvNet,
    LeNet,
    ResNet,
    _size2,
)

CONVNET_DEFAULTS: dict[str, Any] = {
    "width": 128,
    "depth": 3,
    "act": "relu",
    "norm": "instancenorm",
    "pooling": "avgpooling",
}

# ConvNet-family name -> overrides of CONVNET_DEFAULTS (the original's get_network table).
CONVNET_VARIANTS: dict[str, dict[str, Any]] = {
    "ConvNet": {},
    **{f"ConvNetD{d}": {"depth": d} for d in range(1, 9)},
    **{f"ConvNetW{w}": {"width": w} for w in (32, 64, 128, 256, 512, 1024)},
    "ConvNetKIP": {"width": 1024, "norm": "none"},
    "ConvNetAS": {"act": "sigmoid"},
    "ConvNetAR": {"act": "relu"},
    "ConvNetAL": {"act": "leakyrelu"},
    "ConvNetNN": {"norm": "none"},
    "ConvNetBN": {"norm": "batchnorm"},
    "ConvNetLN": {"norm": "layernorm"},
    "ConvNetIN": {"norm": "instancenorm"},
    "ConvNetGN": {"norm": "groupnorm"},
    "ConvNetNP": {"pooling": "none"},
    "ConvNetMP": {"pooling": "maxpooling"},
    "ConvNetAP": {"pooling": "avgpooling"},
}

_OTHERS = {
    "MLP": lambda c, k, s: MLP(c, k, im_size=s),
    "LeNet": lambda c, k, s: LeNet(c, k, im_size=s),
    "AlexNet": lambda c, k, s: AlexNet(c, k, im_size=s),
    "VGG11": lambda c, k, s: VGG("VGG11", c, k, norm="instancenorm", im_size=s),
    "VGG11BN": lambda c, k, s: VGG("VGG11", c, k, norm="batchnorm", im_size=s),
    "ResNet18": lambda c, k, s: ResNet((2, 2, 2, 2), c, k, norm="instancenorm", im_size=s),
    "ResNet18BN": lambda c, k, s: ResNet((2, 2, 2, 2), c, k, norm="batchnorm", im_size=s),
    "ResNet18_AP": lambda c, k, s: ResNet(
        (2, 2, 2, 2), c, k, norm="instancenorm", im_size=s, avg_pool_blocks=True
    ),
    "ResNet18BN_AP": lambda c, k, s: ResNet(
        (2, 2, 2, 2), c, k, norm="batchnorm", im_size=s, avg_pool_blocks=True
    ),
}

MODEL_NAMES: tuple[str, ...] = tuple(CONVNET_VARIANTS) + tuple(_OTHERS)


def default_convnet(im_size: int | Sequence[int]) -> str:
    """The ConvNet name the original uses for an image size.

    Args:
        im_size: (H, W) or one int.

    Returns:
        'ConvNet' (depth 3) up to 32x32, 'ConvNetD4' for 64x64, 'ConvNetD5' for 128x128
        and larger.
    """
    h = max(_size2(im_size))
    return "ConvNet" if h <= 32 else ("ConvNetD4" if h <= 64 else "ConvNetD5")


def _check_name(name: str) -> None:
    if name not in CONVNET_VARIANTS and name not in _OTHERS:
        raise ValueError(f"unknown model {name!r}; expected one of {list(MODEL_NAMES)}")


def _check_sizes(channels: int, num_classes: int) -> None:
    if int(channels) < 1 or int(num_classes) < 1:
        raise ValueError(
            f"channels and num_classes must be >= 1, got channels={channels}, "
            f"num_classes={num_classes}"
        )


def _convnet_config(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(CONVNET_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for {name}; the ConvNet family takes "
            f"{list(CONVNET_DEFAULTS)}"
        )
    cfg = {**CONVNET_DEFAULTS, **CONVNET_VARIANTS[name], **overrides}
    cfg["width"], cfg["depth"] = int(cfg["width"]), int(cfg["depth"])
    return cfg


def model_spec(
    name: str,
    channels: int,
    num_classes: int,
    im_size: int | Sequence[int] = (32, 32),
    **kwargs: Any,
) -> dict[str, Any]:
    """JSON-serialisable constructor arguments; ``get_model(**spec)`` re-creates the model.

    Args:
        name: one of :data:`MODEL_NAMES`.
        channels: input channels C.
        num_classes: output classes K.
        im_size: (H, W) of the inputs (or one int for square images).
        **kwargs: ConvNet-family overrides (width, depth, act, norm, pooling).

    Returns:
        ``{"name", "channels", "num_classes", "im_size": [H, W]}`` plus, for the ConvNet
        family, the resolved ``width``, ``depth``, ``act``, ``norm``, ``pooling``.

    Raises:
        ValueError: an unknown name or option.
    """
    _check_name(name)
    _check_sizes(channels, num_classes)
    spec: dict[str, Any] = {
        "name": name,
        "channels": int(channels),
        "num_classes": int(num_classes),
        "im_size": list(_size2(im_size)),
    }
    if name in CONVNET_VARIANTS:
        spec.update(_convnet_config(name, kwargs))
    elif kwargs:
        raise ValueError(f"{name} takes no options, got {sorted(kwargs)}")
    return spec


def get_model(
    name: str,
    channels: int,
    num_classes: int,
    im_size: int | Sequence[int] = (32, 32),
    **kwargs: Any,
) -> nn.Module:
    """Build a network by its original MTT / DC-bench name, with PyTorch's default init.

    Seed torch yourself (``torch.manual_seed``) for reproducible weights.

    Args:
        name: one of :data:`MODEL_NAMES` ('ConvNet', 'ConvNetD4', 'ConvNetW256',
            'ConvNetBN', 'AlexNet', 'VGG11', 'ResNet18', 'ResNet18BN_AP', 'LeNet', 'MLP', ...).
        channels: input channels C.
        num_classes: output classes K.
        im_size: (H, W) of the inputs (or one int), default (32, 32).
        **kwargs: for the ConvNet family, overrides of ``width``, ``depth``, ``act``,
            ``norm``, ``pooling`` (on top of what the name sets).

    Returns:
        The network, on the CPU in float32, mapping ``(N, C, H, W) -> (N, K)``; its
        :func:`model_spec` is attached as ``model.spec``.

    Raises:
        ValueError: an unknown name (the message lists :data:`MODEL_NAMES`), an unknown
            option, or an image too small for the architecture.
    """
    spec = model_spec(name, channels, num_classes, im_size, **kwargs)
    size = tuple(spec["im_size"])
    if name in CONVNET_VARIANTS:
        net: nn.Module = ConvNet(
            spec["channels"],
            spec["num_classes"],
            width=spec["width"],
            depth=spec["depth"],
            act=spec["act"],
            norm=spec["norm"],
            pooling=spec["pooling"],
            im_size=size,
        )
    else:
        net = _OTHERS[name](spec["channels"], spec["num_classes"], size)
    net.spec = spec
    return net


_SPEC_SHAPE_KEYS = ("name", "channels", "num_classes", "im_size")


def from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Build the network a :func:`model_spec` describes (its inverse).

    Seed torch yourself for reproducible weights; the same spec and seed give the same
    network as the ``get_model`` call that made the spec.

    Args:
        spec: ``{"name", "channels", "num_classes", "im_size"}`` plus, for the ConvNet
            family, any of ``width``, ``depth``, ``act``, ``norm``, ``pooling``.

    Returns:
        The network (see :func:`get_model`), with ``model.spec`` attached.

    Raises:
        ValueError: a spec that is not a mapping, lacks a key, or names an unknown model
            or option.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a model spec must be a mapping, got {type(spec).__name__}")
    missing = [k for k in _SPEC_SHAPE_KEYS if k not in spec]
    if missing:
        raise ValueError(f"model spec {dict(spec)} lacks {missing}")
    options = {k: v for k, v in spec.items() if k not in _SPEC_SHAPE_KEYS}
    return get_model(
        spec["name"], spec["channels"], spec["num_classes"], tuple(spec["im_size"]), **options
    )
