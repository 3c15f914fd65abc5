"""Convolutional networks for the robust_loss study.

``resnet20``, ``vgg16_bn`` and ``mobilenet_v2`` take 3 x 32 x 32 images and
follow ``specs/robust_loss.md`` exactly (its parameter counts are test pins);
``digits_cnn`` takes scikit-learn's 1 x 8 x 8 digits.  All are initialised by
:func:`init_weights`.
"""

from __future__ import annotations

from torch import Tensor, nn

from core.models import register_model


def init_weights(model: nn.Module) -> nn.Module:
    """Kaiming-normal convs (fan_out, ReLU gain), BN weight 1 / bias 0, linear N(0, 0.01) / bias 0.

    The linear rule is the one torchvision uses for VGG and MobileNetV2.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
    return model


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, conv_bias: bool = False
) -> list[nn.Module]:
    return [
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=conv_bias
        ),
        nn.BatchNorm2d(out_channels),
    ]


# ---------------------------------------------------------------- ResNet-20


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(in_channels, out_channels, 3, stride),
            nn.ReLU(inplace=True),
            *_conv_bn(out_channels, out_channels, 3),
        )
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


@register_model("resnet20")
def resnet20(num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-20: 16-channel 3x3 stem, stages 16/32/64 of 3 BasicBlocks, avg pool, linear head."""
    layers: list[nn.Module] = [*_conv_bn(3, 16, 3), nn.ReLU(inplace=True)]
    in_channels = 16
    for stage, channels in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(in_channels, channels, stride))
            in_channels = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return init_weights(nn.Sequential(*layers))


# ---------------------------------------------------------------- VGG-16-BN

_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int = 10) -> nn.Module:
    """VGG-16 (cfg D) with BatchNorm, adaptive avg pool, head Linear(512, 512)-ReLU-Dropout(0.5)-Linear(512, K).

    As in torchvision's ``vgg16_bn``, the convs keep their bias before BN (the spec's pins count it).
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [*_conv_bn(in_channels, item, 3, conv_bias=True), nn.ReLU(inplace=True)]
            in_channels = item
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    ]
    return init_weights(nn.Sequential(*layers))


# ---------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    """torchvision-style block: [1x1 expand] - 3x3 depthwise - 1x1 linear projection (ReLU6)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [*_conv_bn(in_channels, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(inplace=True),
            *_conv_bn(hidden, out_channels, 1),
        ]
        self.body = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.use_residual else self.body(x)


# (expand ratio t, output channels c, repeats n, first stride s)
_MOBILENET_V2_CFG = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
)


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int = 10) -> nn.Module:
    """MobileNetV2 (width 1.0) for 32x32: stride-1 3x3 stem to 32, the spec's (t, c, n, s) stages,
    1x1 conv to 1280, avg pool, dropout 0.2, linear head."""
    layers: list[nn.Module] = [*_conv_bn(3, 32, 3), nn.ReLU6(inplace=True)]
    in_channels = 32
    for expand_ratio, channels, repeats, first_stride in _MOBILENET_V2_CFG:
        for repeat in range(repeats):
            layers.append(InvertedResidual(in_channels, channels, first_stride if repeat == 0 else 1, expand_ratio))
            in_channels = channels
    layers += [
        *_conv_bn(in_channels, 1280, 1),
        nn.ReLU6(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(1280, num_classes),
    ]
    return init_weights(nn.Sequential(*layers))


# ---------------------------------------------------------------- digits CNN


@register_model("digits_cnn")
def digits_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Small CNN for 8x8 digits: conv32-conv64 (8x8), max pool, conv128 (4x4), avg pool, linear head."""
    layers: list[nn.Module] = [
        *_conv_bn(in_channels, 32, 3),
        nn.ReLU(inplace=True),
        *_conv_bn(32, 64, 3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        *_conv_bn(64, 128, 3),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    ]
    return init_weights(nn.Sequential(*layers))
