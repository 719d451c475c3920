"""Bottleneck ResNets (He et al. 2016, Table 1): resnet50 [3,4,6,3], resnet101 [3,4,23,3].

``stem="imagenet"``: 7×7/2 conv + 3×3/2 max-pool (224×224 inputs; torchvision-compatible layout and
parameter counts: resnet50 25,557,032, resnet101 44,549,160). ``stem="cifar"``: a 3×3/1 conv and no
pool, for 32×32 inputs. Stride sits on the 3×3 conv (the "v1.5" variant torchvision uses).
"""

from __future__ import annotations

import torch
from torch import nn

from .cifar_resnet import _init_weights


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 → 1×1 expand (×4), projection shortcut when shape changes."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu3(y + self.downsample(x))


class ResNet(nn.Module):
    """Bottleneck ResNet with an ImageNet or CIFAR stem."""

    def __init__(self, layers: list[int], num_classes: int = 1000, stem: str = "imagenet") -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.stem_kind = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(in_planes, planes, stride))
                in_planes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000, stem: str = "imagenet") -> ResNet:
    """ResNet-50; ImageNet stem: 25,557,032 params, ≈4.1 G MACs at 224×224."""
    return ResNet([3, 4, 6, 3], num_classes, stem)


def resnet101(num_classes: int = 1000, stem: str = "imagenet") -> ResNet:
    """ResNet-101; ImageNet stem: 44,549,160 params, ≈7.8 G MACs at 224×224."""
    return ResNet([3, 4, 23, 3], num_classes, stem)


def resnet50_cifar(num_classes: int = 10) -> ResNet:
    """ResNet-50 with the CIFAR stem (3×3/1, no max-pool)."""
    return resnet50(num_classes, "cifar")


def resnet101_cifar(num_classes: int = 10) -> ResNet:
    """ResNet-101 with the CIFAR stem."""
    return resnet101(num_classes, "cifar")
