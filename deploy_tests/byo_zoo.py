"""Bring-your-own architectures the pruner must handle (issue #16): each factory is a ``package.module:factory``
model of the kind users have, with the coupling that makes channel pruning hard.

- ``grouped_net``: 3×3 convolutions with ``groups=4`` (ResNeXt-style) inside residual blocks;
- ``separable_net``: depthwise-separable blocks (MobileNet v1 style), depthwise + pointwise;
- ``se_net``: squeeze-and-excitation gates (a pooled branch whose sigmoid multiplies the feature map);
- ``concat_split_net``: two branches concatenated (Inception style) and a ``torch.chunk`` split of a feature map;
- ``dilated_bias_net``: dilated convolutions with bias and no BatchNorm;
- ``bottleneck_head_net``: a Linear bottleneck head (fc → ReLU → fc) after global pooling;
- ``mixed_net``: the issue's crash case — grouped convs, an SE gate and a concat in one model.
"""

from __future__ import annotations

import torch
from torch import nn


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Head(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


class GroupedBlock(nn.Module):
    """1×1 reduce → 3×3 grouped conv → 1×1 expand, plus identity."""

    def __init__(self, width: int, inner: int, groups: int) -> None:
        super().__init__()
        self.reduce = _cbr(width, inner, 1)
        self.grouped = _cbr(inner, inner, 3, groups=groups)
        self.expand = nn.Sequential(nn.Conv2d(inner, width, 1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.expand(self.grouped(self.reduce(x))))


class GroupedNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32, groups: int = 4) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.block1 = GroupedBlock(width, width, groups)
        self.down = _cbr(width, 2 * width, 3, stride=2, groups=groups)
        self.block2 = GroupedBlock(2 * width, 2 * width, groups)
        self.head = _Head(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.down(self.block1(self.stem(x)))))


class SeparableNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [_cbr(3, width)]
        cin = width
        for cout, stride in ((width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2)):
            layers += [_cbr(cin, cin, 3, stride, groups=cin), _cbr(cin, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = _Head(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SqueezeExcite(nn.Module):
    """x · σ(W₂ ReLU(W₁ avgpool(x))) with 1×1 convs (Hu et al., CVPR 2018)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))


class SENet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.conv1 = _cbr(width, width)
        self.se1 = SqueezeExcite(width)
        self.conv2 = _cbr(width, 2 * width, stride=2)
        self.conv3 = _cbr(2 * width, 2 * width)
        self.se2 = SqueezeExcite(2 * width)
        self.head = _Head(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.se1(self.conv1(x))
        x = self.conv2(x)
        return self.head(self.se2(self.conv3(x)))


class ConcatSplitNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.branch_a = _cbr(width, width, 1)
        self.branch_b = nn.Sequential(_cbr(width, width // 2, 1), _cbr(width // 2, width, 3))
        self.mix = _cbr(2 * width, 2 * width, 3, stride=2)
        self.left = _cbr(width, width, 3)
        self.right = _cbr(width, width, 3)
        self.head = _Head(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.mix(torch.cat([self.branch_a(x), self.branch_b(x)], dim=1))
        a, b = torch.chunk(x, 2, dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], dim=1))


class DilatedBiasNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=2, dilation=2, bias=True)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=True)
        self.conv4 = nn.Conv2d(2 * width, 2 * width, 3, padding=4, dilation=4, bias=True)
        self.head = _Head(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.head(torch.relu(self.conv4(x)))


class BottleneckHeadNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, width), _cbr(width, 2 * width, stride=2), _cbr(2 * width, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(2 * width, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.pool(self.features(x)).flatten(1))))


class MixedNet(nn.Module):
    """The issue's report: grouped 3×3 convs (groups=4), an SE-style channel gate and a concat of two branches."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.grouped = _cbr(width, width, 3, groups=4)
        self.se = SqueezeExcite(width)
        self.branch_a = _cbr(width, width, 3, groups=4)
        self.branch_b = _cbr(width, width, 1)
        self.down = _cbr(2 * width, 2 * width, 3, stride=2, groups=4)
        self.head = _Head(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.se(self.grouped(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        return self.head(self.down(x))


def grouped_net(num_classes: int = 10, width: int = 32, groups: int = 4) -> GroupedNet:
    """Residual blocks with 3×3 grouped convolutions (``groups``)."""
    return GroupedNet(num_classes, width, groups)


def separable_net(num_classes: int = 10, width: int = 32) -> SeparableNet:
    """Depthwise-separable blocks."""
    return SeparableNet(num_classes, width)


def se_net(num_classes: int = 10, width: int = 32) -> SENet:
    """Convolutions with squeeze-and-excitation gates."""
    return SENet(num_classes, width)


def concat_split_net(num_classes: int = 10, width: int = 32) -> ConcatSplitNet:
    """Concatenated branches and a chunk split."""
    return ConcatSplitNet(num_classes, width)


def dilated_bias_net(num_classes: int = 10, width: int = 32) -> DilatedBiasNet:
    """Dilated convolutions with bias, no BatchNorm."""
    return DilatedBiasNet(num_classes, width)


def bottleneck_head_net(num_classes: int = 10, width: int = 32, hidden: int = 64) -> BottleneckHeadNet:
    """A Linear bottleneck classifier head."""
    return BottleneckHeadNet(num_classes, width, hidden)


def mixed_net(num_classes: int = 10, width: int = 32) -> MixedNet:
    """Grouped convs + SE gate + concat (the issue's crash case)."""
    return MixedNet(num_classes, width)


BATTERY = ("grouped_net", "separable_net", "se_net", "concat_split_net", "dilated_bias_net", "bottleneck_head_net",
           "mixed_net")
