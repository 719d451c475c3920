"""A torchvision-style model factory for the tests (torchvision does not import on the CPU test machines).

``resnet18`` has torchvision's signature — ``resnet18(*, weights=None, progress=True, **kwargs)``, keyword-only,
``num_classes`` arriving through ``**kwargs`` — and torchvision's layout and state_dict key names (``conv1``,
``bn1``, ``layer1.0.conv1`` … ``layer4.1.bn2``, ``downsample.0/1``, ``fc``), only narrower (``width`` kwarg) so
it trains in seconds. Resolved as ``deploy_tests.tv_like:resnet18``, the path ``torchvision.models:resnet18`` takes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: conv3×3-BN-ReLU-conv3×3-BN plus the (projected) input, ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout (7×7 stride-2 stem, max-pool, four stages of two blocks, avg-pool, fc)."""

    def __init__(self, num_classes: int = 1000, width: int = 8) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(3, w[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(w[0], w[0]), BasicBlock(w[0], w[0]))
        self.layer2 = nn.Sequential(BasicBlock(w[0], w[1], 2), BasicBlock(w[1], w[1]))
        self.layer3 = nn.Sequential(BasicBlock(w[1], w[2], 2), BasicBlock(w[2], w[2]))
        self.layer4 = nn.Sequential(BasicBlock(w[2], w[3], 2), BasicBlock(w[3], w[3]))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(w[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """torchvision's signature. ``weights`` must be None (like torchvision offline: pretrained weights would be
    downloaded); ``kwargs`` go to :class:`ResNet` (``num_classes``, ``width``)."""
    if weights is not None:
        raise RuntimeError(f"cannot download pretrained weights {weights!r}: no network; pass weights=None")
    return ResNet(**kwargs)
