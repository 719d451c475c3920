"""MobileNetV2 (Sandler et al., CVPR 2018): inverted residuals with depthwise-separable convs.

``variant="imagenet"``: the paper's layout (stride-2 stem, 1280-d head, dropout 0.2): 3,504,872
params and ≈300 M MACs at 224×224 with width 1.0. ``variant="cifar"``: stride 1 in the stem and in
the first two stride-2 stages (the common CIFAR adaptation), for 32×32 inputs.
"""

from __future__ import annotations

import torch
from torch import nn

# t (expansion), c (channels), n (repeats), s (stride)
SETTINGS = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn(inp: int, oup: int, k: int, s: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True)
    )


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise → 1×1 linear project; identity add when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand))
        self.use_res = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(inp, hidden, 1, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 for ImageNet-size or CIFAR-size inputs."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, variant: str = "imagenet", dropout: float = 0.2) -> None:
        super().__init__()
        if variant not in ("imagenet", "cifar"):
            raise ValueError(f"variant must be 'imagenet' or 'cifar', got {variant!r}")
        cifar = variant == "cifar"
        inp = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        feats: list[nn.Module] = [_conv_bn(3, inp, 3, 1 if cifar else 2)]
        for i, (t, c, n, s) in enumerate(SETTINGS):
            oup = _make_divisible(c * width_mult)
            if cifar and i in (1, 2):
                s = 1
            for j in range(n):
                feats.append(InvertedResidual(inp, oup, s if j == 0 else 1, t))
                inp = oup
        feats.append(_conv_bn(inp, self.last_channel, 1, 1))
        self.features = nn.Sequential(*feats)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0, variant: str = "imagenet") -> MobileNetV2:
    """MobileNetV2; ImageNet variant: 3,504,872 params, ≈300 M MACs at 224×224."""
    return MobileNetV2(num_classes, width_mult, variant)


def mobilenet_v2_cifar(num_classes: int = 10, width_mult: float = 1.0) -> MobileNetV2:
    """MobileNetV2, CIFAR variant (32×32 inputs)."""
    return MobileNetV2(num_classes, width_mult, "cifar")
