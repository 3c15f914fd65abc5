"""Vision model registry: the spec's parameter-count pins, init, forward/backward."""

import math

import pytest
import torch
from torch import nn

from core.models import available_models, build_model, count_parameters

VISION_MODELS = ["resnet20", "vgg16_bn", "mobilenet_v2", "digits_cnn"]


def test_registry_lists_the_vision_models():
    assert set(VISION_MODELS) <= set(available_models())
    with pytest.raises(ValueError, match="resnet20"):
        build_model("resnet200")


@pytest.mark.parametrize(
    "name, num_classes, expected",
    [
        ("resnet20", 10, 272_474),
        ("vgg16_bn", 10, 14_990_922),
        ("vgg16_bn", 100, 15_037_092),
        ("mobilenet_v2", 10, 2_236_682),
    ],
)
def test_parameter_count_pins(name, num_classes, expected):
    assert count_parameters(build_model(name, num_classes=num_classes)) == expected


@pytest.mark.parametrize("name, input_shape", [("resnet20", (3, 32, 32)), ("vgg16_bn", (3, 32, 32)), ("mobilenet_v2", (3, 32, 32)), ("digits_cnn", (1, 8, 8))])
def test_forward_backward(name, input_shape):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7)
    logits = model(torch.randn(2, *input_shape))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, *input_shape)).shape == (1, 7)


def test_kaiming_fan_out_and_batchnorm_init():
    torch.manual_seed(0)
    model = build_model("vgg16_bn", num_classes=10)
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]  # 512 -> 512, 3x3
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.02)
    assert torch.all(conv.bias == 0)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert torch.all(head.bias == 0) and head.weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_mobilenet_residuals_only_where_shapes_match():
    from core.models.vision import InvertedResidual

    blocks = [m for m in build_model("mobilenet_v2").modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    assert [b.use_residual for b in blocks].count(True) == 10  # n - 1 per stage: 0+1+2+3+2+2+0
