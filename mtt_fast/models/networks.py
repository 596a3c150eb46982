"""The networks of the original MTT / DC-bench code, by their original structure.

Module and parameter names, registration order and shapes follow the original
``networks.py`` so that ``model.named_parameters()`` lines up with the original replay
buffers (lists of ``p.detach()`` in ``parameters()`` order).

Deviations, all invisible on the original's inputs (3x32x32 and 1x28x28):

* The "1-channel" padding quirk of the original (first conv padded so 28x28 becomes
  32x32) is applied only to 1-channel 28x28 inputs, where the original meant it; on other
  1-channel sizes the original's feature-size bookkeeping could disagree with the forward.
* Classifier input sizes are computed from ``im_size`` instead of being hard-coded for
  32x32, so AlexNet, VGG, LeNet, MLP and ResNet18_AP also build for other sizes.
* ``ResNet`` pools with an adaptive 1x1 average (identical to the original's
  ``avg_pool2d(out, 4)`` on 32x32 and 28x28 inputs; the original fails on 64x64).

Every network has ``embed(x) -> (N, F)`` (the flattened features before the last linear
layer) and ``forward(x) -> (N, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtt_fast.ops.conv2d import conv2d as _conv2d_2x
from mtt_fast.ops.norm_block import norm_block

ACTS = ("relu", "sigmoid", "leakyrelu")
NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
POOLINGS = ("avgpooling", "maxpooling", "none")
RESNET_NORMS = ("instancenorm", "batchnorm")


def _size2(im_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(im_size, int):
        return (im_size, im_size)
    t = tuple(int(s) for s in im_size)
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"im_size must be (H, W) with positive sizes, got {im_size!r}")
    return t  # type: ignore[return-value]


def _is_28_gray(channels: int, im_size: tuple[int, int]) -> bool:
    # MNIST-like inputs: the original pads the first conv so 28x28 maps to 32x32.
    return channels == 1 and im_size[0] == 28


def _check(value: str, options: Sequence[str], what: str) -> str:
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; expected one of {list(options)}")
    return value


def _conv_out(size: int, kernel: int, padding: int) -> int:
    return size + 2 * padding - kernel + 1


def _too_small(model: str, im_size: tuple[int, int], detail: str) -> ValueError:
    return ValueError(f"{model}: input {im_size[0]}x{im_size[1]} is too small ({detail})")


# Default of ConvNet(fused=None): run conv -> [instance norm -> ReLU -> avg pool] blocks
# through the fused op (mtt_fast.ops.norm_block). Set it to False (or build with
# fused=False, or set ``model.fused = False``) for the plain modules, e.g. to compare.
FUSED_NORM_BLOCK = True
# In fused blocks, run the convolutions through mtt_fast.ops.conv2d (same forward, a faster
# explicit double backward); False keeps nn.Conv2d's autograd there.
FUSED_CONV = True


def _instance_or_batch(norm: str, c: int) -> nn.Module:
    return nn.GroupNorm(c, c, affine=True) if norm == "instancenorm" else nn.BatchNorm2d(c)


class MLP(nn.Module):
    """Three-layer perceptron (hidden 128-128, ReLU).

    Args:
        channels: input channels C.
        num_classes: output classes K.
        im_size: (H, W); the input layer has C*H*W features (784 for 1x28x28 and 3072
            for 3x32x32, as the original).

    Shapes: ``x (N, C, H, W) -> (N, K)``.
    """

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32)) -> None:
        super().__init__()
        h, w = _size2(im_size)
        self.fc_1 = nn.Linear(channels * h * w, 128)
        self.fc_2 = nn.Linear(128, 128)
        self.fc_3 = nn.Linear(128, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.fc_1(x.flatten(1)))
        return F.relu(self.fc_2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_3(self.embed(x))


class ConvNet(nn.Module):
    """The ConvNet of the paper: ``depth`` x [conv3x3 -> norm -> act -> pool], then Linear.

    Args:
        channels: input channels C.
        num_classes: output classes K.
        width: channels of every conv layer (default 128).
        depth: number of conv blocks (default 3; the original uses 4 for 64x64 and 5 for
            128x128 inputs).
        act: 'relu' (default), 'sigmoid' or 'leakyrelu' (slope 0.01).
        norm: 'instancenorm' (default; GroupNorm(C, C)), 'batchnorm', 'layernorm'
            (LayerNorm over (C, h, w)), 'groupnorm' (GroupNorm(4, C)) or 'none'.
        pooling: 'avgpooling' (default; 2x2 stride 2), 'maxpooling' or 'none'.
        im_size: (H, W) of the inputs. For 1-channel 28x28 inputs the first conv has
            padding 3 (28x28 -> 32x32) and the sizes are counted from 32x32, as the
            original.
        fused: with instancenorm + relu + avgpooling, run each block's norm, ReLU and
            pooling as one fused op (:func:`mtt_fast.ops.norm_block.norm_block`, with an
            analytic double backward) and its convolution through
            :func:`mtt_fast.ops.conv2d.conv2d` (a faster explicit double backward;
            module-level ``FUSED_CONV``); None (default) follows the module-level
            ``FUSED_NORM_BLOCK``. The modules, parameter names, order and shapes are the
            same either way (``features.{4d+1}.weight`` / ``.bias`` are the GroupNorm's),
            so flat vectors, stores and state dicts are interchangeable. The attribute
            ``fused`` can be changed after construction. Other variants ignore it.

    Raises:
        ValueError: an unknown act / norm / pooling, or ``depth`` poolings shrink the
            image below 1x1.

    Shapes: ``x (N, C, H, W) -> (N, K)``.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        width: int = 128,
        depth: int = 3,
        act: str = "relu",
        norm: str = "instancenorm",
        pooling: str = "avgpooling",
        im_size=(32, 32),
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        _check(act, ACTS, "activation")
        _check(norm, NORMS, "norm")
        _check(pooling, POOLINGS, "pooling")
        if depth < 1 or width < 1:
            raise ValueError(f"ConvNet needs depth >= 1 and width >= 1, got {depth}, {width}")
        im_size = _size2(im_size)
        pad_first = 3 if _is_28_gray(channels, im_size) else 1
        h, w = (32, 32) if pad_first == 3 else im_size
        layers: list[nn.Module] = []
        in_c = channels
        for d in range(depth):
            layers.append(nn.Conv2d(in_c, width, kernel_size=3, padding=pad_first if d == 0 else 1))
            if norm != "none":
                layers.append(self._norm(norm, width, h, w))
            layers.append(self._act(act))
            in_c = width
            if pooling != "none":
                layers.append(nn.MaxPool2d(2, 2) if pooling == "maxpooling" else nn.AvgPool2d(2, 2))
                h, w = h // 2, w // 2
                if h < 1 or w < 1:
                    raise _too_small(
                        f"ConvNet(depth={depth})",
                        im_size,
                        f"{depth} 2x2 poolings need at least {2**depth}x{2**depth}; "
                        "use a smaller depth or pooling='none'",
                    )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * h * w, num_classes)
        self.fused = fused
        # blocks are [conv, norm, act, pool]: indices of the (conv, norm) pairs
        self._fusable = (
            [(4 * d, 4 * d + 1) for d in range(depth)]
            if (norm, act, pooling) == ("instancenorm", "relu", "avgpooling")
            else None
        )

    def uses_fused_blocks(self) -> bool:
        """Whether :meth:`embed` runs the fused norm block (see ``fused``). Never while
        ``torch.compile`` traces the model: the fused ops are eager-mode kernels (their
        Functions query the running backward pass), and the compiler fuses the plain
        modules itself."""
        if torch.compiler.is_compiling():
            return False
        fused = getattr(self, "fused", None)  # absent on modules pickled before it existed
        on = FUSED_NORM_BLOCK if fused is None else bool(fused)
        return on and getattr(self, "_fusable", None) is not None

    @staticmethod
    def _act(act: str) -> nn.Module:
        if act == "sigmoid":
            return nn.Sigmoid()
        if act == "leakyrelu":
            return nn.LeakyReLU(negative_slope=0.01)
        return nn.ReLU(inplace=True)

    @staticmethod
    def _norm(norm: str, c: int, h: int, w: int) -> nn.Module:
        if norm == "batchnorm":
            return nn.BatchNorm2d(c, affine=True)
        if norm == "layernorm":
            return nn.LayerNorm([c, h, w], elementwise_affine=True)
        if norm == "groupnorm":
            return nn.GroupNorm(4, c, affine=True)
        return nn.GroupNorm(c, c, affine=True)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_fused_blocks():
            return self.features(x).flatten(1)
        f = self.features
        for ci, ni in self._fusable:
            conv, gn = f[ci], f[ni]
            # the modules' own (or functional_call's substituted) parameters
            if FUSED_CONV:
                x = _conv2d_2x(x, conv.weight, conv.bias, conv.padding)
            else:
                x = conv(x)
            x = norm_block(x, gn.weight, gn.bias, gn.eps)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class LeNet(nn.Module):
    """LeNet-5 as in the original (conv5 6 -> conv5 16, max pooling, FC 120-84-K).

    For 1-channel 28x28 inputs the first conv has padding 2 (as the original).
    Shapes: ``x (N, C, H, W) -> (N, K)``.
    """

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32)) -> None:
        super().__init__()
        im_size = _size2(im_size)
        pad = 2 if _is_28_gray(channels, im_size) else 0
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5, padding=pad),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        hw = [(_conv_out(_conv_out(s, 5, pad) // 2, 5, 0)) // 2 for s in im_size]
        if min(hw) < 1:
            raise _too_small("LeNet", im_size, "needs at least 16x16")
        self.fc_1 = nn.Linear(16 * hw[0] * hw[1], 120)
        self.fc_2 = nn.Linear(120, 84)
        self.fc_3 = nn.Linear(84, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x).flatten(1)
        out = F.relu(self.fc_1(out))
        return F.relu(self.fc_2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_3(self.embed(x))


class AlexNet(nn.Module):
    """The small AlexNet of the original (5 convs 128-192-256-192-192, 3 max pools, FC).

    For 1-channel 28x28 inputs the first conv has padding 4 (28x28 -> 32x32).
    Shapes: ``x (N, C, H, W) -> (N, K)``.
    """

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32)) -> None:
        super().__init__()
        im_size = _size2(im_size)
        pad = 4 if _is_28_gray(channels, im_size) else 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, kernel_size=5, stride=1, padding=pad),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(128, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(192, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 192, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(192, 192, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        hw = [_conv_out(s, 5, pad) // 8 for s in im_size]
        if min(hw) < 1:
            raise _too_small("AlexNet", im_size, "needs at least 8x8")
        self.fc = nn.Linear(192 * hw[0] * hw[1], num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


VGG_CFG: dict[str, list[int | str]] = {
    "VGG11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG of the original: conv3x3 -> norm -> ReLU blocks, 5 max pools, one Linear.

    Args:
        name: configuration ('VGG11').
        channels: input channels C.
        num_classes: output classes K.
        norm: 'instancenorm' (default; GroupNorm(C, C)) or 'batchnorm'.
        im_size: (H, W); 32x32 gives 512 features as the original. For 1-channel 28x28
            inputs the first conv has padding 3.

    Shapes: ``x (N, C, H, W) -> (N, K)``.
    """

    def __init__(
        self,
        name: str,
        channels: int,
        num_classes: int,
        norm: str = "instancenorm",
        im_size=(32, 32),
    ) -> None:
        super().__init__()
        _check(name, tuple(VGG_CFG), "VGG configuration")
        _check(norm, RESNET_NORMS, "norm")
        im_size = _size2(im_size)
        pad_first = 3 if _is_28_gray(channels, im_size) else 1
        h, w = (_conv_out(s, 3, pad_first) for s in im_size)
        layers: list[nn.Module] = []
        in_c = channels
        for i, v in enumerate(VGG_CFG[name]):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
                if h < 1 or w < 1:
                    raise _too_small(name, im_size, "needs at least 32x32")
            else:
                assert isinstance(v, int)
                layers += [
                    nn.Conv2d(in_c, v, kernel_size=3, padding=pad_first if i == 0 else 1),
                    _instance_or_batch(norm, v),
                    nn.ReLU(inplace=True),
                ]
                in_c = v
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_c * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class BasicBlock(nn.Module):
    """ResNet basic block (two conv3x3, strided first conv, 1x1 conv shortcut)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "instancenorm"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _instance_or_batch(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = _instance_or_batch(norm, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                _instance_or_batch(norm, planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class BasicBlockAP(nn.Module):
    """The '_AP' basic block: stride-2 convs replaced by stride-1 conv + 2x2 avg pool."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "instancenorm"):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn1 = _instance_or_batch(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = _instance_or_batch(norm, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=1, bias=False),
                nn.AvgPool2d(kernel_size=2, stride=2),
                _instance_or_batch(norm, planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.stride != 1:
            out = F.avg_pool2d(out, kernel_size=2, stride=2)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of the original DC code (3x3 stem, 4 stages 64-128-256-512).

    Args:
        num_blocks: blocks per stage, e.g. (2, 2, 2, 2) for ResNet18.
        channels: input channels C.
        num_classes: output classes K.
        norm: 'instancenorm' (default, GroupNorm(C, C)) or 'batchnorm'.
        im_size: (H, W); used only by the '_AP' variant, whose classifier sees the final
            (H // 8) x (W // 8) map (4x4 for 32x32, 3x3 for 28x28, as the original).
        avg_pool_blocks: the '_AP' variant (stride-2 convs become stride-1 conv + 2x2
            average pooling; no global pooling, the classifier sees the whole map).

    Shapes: ``x (N, C, H, W) -> (N, K)``.
    """

    def __init__(
        self,
        num_blocks: Sequence[int],
        channels: int,
        num_classes: int,
        norm: str = "instancenorm",
        im_size=(32, 32),
        avg_pool_blocks: bool = False,
    ) -> None:
        super().__init__()
        _check(norm, RESNET_NORMS, "norm")
        im_size = _size2(im_size)
        self.avg_pool_blocks = avg_pool_blocks
        block = BasicBlockAP if avg_pool_blocks else BasicBlock
        self.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = _instance_or_batch(norm, 64)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, planes, (1 if i == 0 else 2) if j == 0 else 1, norm))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        if avg_pool_blocks:
            h, w = im_size
            for _ in range(3):
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise _too_small("ResNet_AP", im_size, "needs at least 8x8")
            self.classifier = nn.Linear(in_planes * h * w, num_classes)
        else:
            self.classifier = nn.Linear(in_planes, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if not self.avg_pool_blocks:
            # == avg_pool2d(out, 4) of the original on 32x32 / 28x28 inputs
            out = F.adaptive_avg_pool2d(out, 1)
        return out.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
