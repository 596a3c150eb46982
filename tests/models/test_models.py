from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mtt_fast import models
from mtt_fast.models import MODEL_NAMES, get_model, model_spec
from mtt_fast.models.registry import default_convnet


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("name", "c", "k", "size", "expected"),
    [
        ("ConvNet", 3, 10, (32, 32), 320_010),
        ("ConvNet", 3, 100, (32, 32), 504_420),
        ("ConvNetD4", 3, 200, (64, 64), 857_160),
        ("ConvNet", 1, 10, (28, 28), 317_706),
        # well-known CIFAR-10 counts of the original DC / MTT networks
        ("ResNet18BN", 3, 10, (32, 32), 11_173_962),
        ("VGG11BN", 3, 10, (32, 32), 9_231_114),
    ],
)
def test_exact_param_counts(name, c, k, size, expected):
    assert n_params(get_model(name, c, k, size)) == expected


# Names too deep for 32x32 / 28x28 inputs (2**depth > 32).
TOO_DEEP = {"ConvNetD6", "ConvNetD7", "ConvNetD8"}
# Big ones: build + one forward of a single image is still fast enough.
BATCH = 2


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n not in TOO_DEEP])
@pytest.mark.parametrize(("c", "s"), [(3, 32), (1, 28)])
def test_forward_shapes(name, c, s):
    torch.manual_seed(0)
    m = get_model(name, c, 7, (s, s))
    b = 1 if name in ("ConvNetW1024", "ConvNetKIP") else BATCH
    with torch.no_grad():
        y = m(torch.randn(b, c, s, s))
    assert y.shape == (b, 7)
    assert torch.isfinite(y).all()
    assert m.embed(torch.randn(b, c, s, s)).shape[0] == b


@pytest.mark.parametrize("name", sorted(TOO_DEEP))
def test_too_deep_raises_and_bigger_works(name):
    depth = int(name[-1])
    with pytest.raises(ValueError, match="too small"):
        get_model(name, 3, 10, (32, 32))
    s = 2**depth
    m = get_model(name, 3, 10, (s, s), width=4)
    assert m(torch.randn(1, 3, s, s)).shape == (1, 10)


@pytest.mark.parametrize(
    "name", ["ConvNetD4", "ResNet18", "ResNet18BN", "ResNet18_AP", "ResNet18BN_AP"]
)
def test_forward_64(name):
    m = get_model(name, 3, 5, (64, 64))
    with torch.no_grad():
        y = m(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 5)


def test_convnet_structure_defaults():
    m = get_model("ConvNet", 3, 10)
    kinds = [type(l) for l in m.features]
    assert kinds == [nn.Conv2d, nn.GroupNorm, nn.ReLU, nn.AvgPool2d] * 3
    gn = m.features[1]
    assert gn.num_groups == gn.num_channels == 128 and gn.affine
    assert m.classifier.in_features == 128 * 4 * 4
    # the 1x28x28 quirk: first conv padded by 3, 28 counted as 32
    m1 = get_model("ConvNet", 1, 10, (28, 28))
    assert m1.features[0].padding == (3, 3) and m1.features[4].padding == (1, 1)
    assert m1.classifier.in_features == 128 * 4 * 4


@pytest.mark.parametrize(
    ("name", "layer_type"),
    [
        ("ConvNetBN", nn.BatchNorm2d),
        ("ConvNetLN", nn.LayerNorm),
        ("ConvNetGN", nn.GroupNorm),
        ("ConvNetAS", nn.Sigmoid),
        ("ConvNetAL", nn.LeakyReLU),
        ("ConvNetMP", nn.MaxPool2d),
    ],
)
def test_convnet_variants_use_their_layers(name, layer_type):
    m = get_model(name, 3, 10)
    assert any(type(l) is layer_type for l in m.features)


def test_variant_details():
    assert get_model("ConvNetGN", 3, 10).features[1].num_groups == 4
    assert get_model("ConvNetLN", 3, 10).features[1].normalized_shape == (128, 32, 32)
    assert get_model("ConvNetAL", 3, 10).features[2].negative_slope == 0.01
    assert get_model("ConvNetNP", 3, 10).classifier.in_features == 128 * 32 * 32
    assert not any(
        isinstance(l, nn.GroupNorm | nn.BatchNorm2d) for l in get_model("ConvNetNN", 3, 10).features
    )
    assert get_model("ConvNetW64", 3, 10).features[0].out_channels == 64
    assert isinstance(get_model("VGG11", 3, 10).features[1], nn.GroupNorm)
    assert isinstance(get_model("VGG11BN", 3, 10).features[1], nn.BatchNorm2d)
    assert isinstance(get_model("ResNet18", 3, 10).bn1, nn.GroupNorm)
    assert isinstance(get_model("ResNet18BN", 3, 10).bn1, nn.BatchNorm2d)
    ap = get_model("ResNet18_AP", 1, 10, (28, 28))
    assert ap.classifier.in_features == 512 * 3 * 3
    assert get_model("ResNet18BN_AP", 3, 10).classifier.in_features == 512 * 4 * 4
    assert get_model("MLP", 1, 10, (28, 28)).fc_1.in_features == 784
    assert get_model("MLP", 3, 10).fc_1.in_features == 3072
    assert get_model("LeNet", 1, 10, (28, 28)).fc_1.in_features == 400
    assert get_model("AlexNet", 1, 10, (28, 28)).fc.in_features == 192 * 16


def test_original_parameter_names():
    names = [n for n, _ in get_model("ConvNet", 3, 10).named_parameters()]
    assert names[:2] == ["features.0.weight", "features.0.bias"]
    assert names[-2:] == ["classifier.weight", "classifier.bias"]
    r = [n for n, _ in get_model("ResNet18", 3, 10).named_parameters()]
    assert r[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer2.0.shortcut.1.weight" in r
    a = [n for n, _ in get_model("ResNet18_AP", 3, 10).named_parameters()]
    assert "layer2.0.shortcut.2.weight" in a


def test_kwargs_override_and_spec_roundtrip():
    m = get_model("ConvNetD4", 3, 10, (64, 64), width=16, norm="batchnorm", act="sigmoid")
    assert m.features[0].out_channels == 16 and len(m.features) == 4 * 4
    spec = model_spec("ConvNetD4", 3, 10, (64, 64), width=16, norm="batchnorm", act="sigmoid")
    assert spec == m.spec
    spec = json.loads(json.dumps(spec))
    assert spec["depth"] == 4 and spec["im_size"] == [64, 64]
    m2 = get_model(**spec)
    assert [p.shape for p in m2.parameters()] == [p.shape for p in m.parameters()]
    s2 = model_spec("ResNet18", 3, 10, 32)
    assert s2 == {"name": "ResNet18", "channels": 3, "num_classes": 10, "im_size": [32, 32]}
    assert n_params(get_model(**s2)) == n_params(get_model("ResNet18", 3, 10))


def test_errors():
    with pytest.raises(ValueError, match="ConvNetD4") as e:
        get_model("NoSuchNet", 3, 10)
    assert "MODEL_NAMES" not in str(e.value) and "ResNet18" in str(e.value)
    with pytest.raises(ValueError, match="takes no options"):
        get_model("ResNet18", 3, 10, width=3)
    with pytest.raises(ValueError, match="unknown option"):
        get_model("ConvNet", 3, 10, widht=3)
    with pytest.raises(ValueError, match="unknown norm"):
        get_model("ConvNet", 3, 10, norm="weird")
    with pytest.raises(ValueError, match="unknown activation"):
        get_model("ConvNet", 3, 10, act="tanh")
    with pytest.raises(ValueError, match="unknown pooling"):
        get_model("ConvNet", 3, 10, pooling="sum")
    with pytest.raises(ValueError, match="too small"):
        get_model("VGG11", 3, 10, (16, 16))


def test_default_init_is_seeded_by_torch():
    torch.manual_seed(3)
    a = models.flatten(get_model("ConvNet", 3, 10))
    torch.manual_seed(3)
    b = models.flatten(get_model("ConvNet", 3, 10))
    assert torch.equal(a, b)


def test_default_convnet():
    assert default_convnet(32) == "ConvNet"
    assert default_convnet((28, 28)) == "ConvNet"
    assert default_convnet((64, 64)) == "ConvNetD4"
    assert default_convnet(128) == "ConvNetD5"


def test_exports():
    for name in (
        "get_model",
        "model_spec",
        "MODEL_NAMES",
        "functional",
        "ParamLayout",
        "layout",
        "flatten",
        "unflatten",
        "load_flat",
        "functional_forward",
    ):
        assert hasattr(models, name), name
