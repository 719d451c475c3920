"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

Depth 6n+2: a 3×3/16 stem, three stages of n basic blocks with 16/32/64 channels (stride 2 at
the start of stages 2 and 3), global average pooling and a linear classifier.

Shortcut at a resolution/width change:
- ``"B"`` (default): 1×1 conv + BN projection. This is what pruning needs: every tensor that is
  added in a residual sum comes from a module, so torch-pruning's dependency graph couples them.
- ``"A"``: the paper's parameter-free option (stride-2 subsample + zero-padded channels). It
  reproduces the paper's counts exactly (resnet56: 853,018 params) but cannot be pruned, because
  the padding width is hard-coded; use it only for reference counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _PadShortcut(nn.Module):
    """Option A shortcut: subsample by 2 and zero-pad the channel dimension."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or projection) shortcut; ReLU after the sum."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = _PadShortcut(in_planes, planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs."""

    def __init__(self, depth: int, num_classes: int = 10, shortcut: str = "B", width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        planes = [width, 2 * width, 4 * width]
        in_planes = width
        stages = []
        for i, p in enumerate(planes):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, p, stride, shortcut))
                in_planes = p
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet20(num_classes: int = 10, **kw: object) -> CifarResNet:
    """ResNet-20 (n=3): 0.27 M params, ≈41 M MACs at 32×32."""
    return CifarResNet(20, num_classes, **kw)  # type: ignore[arg-type]


def resnet32(num_classes: int = 10, **kw: object) -> CifarResNet:
    """ResNet-32 (n=5)."""
    return CifarResNet(32, num_classes, **kw)  # type: ignore[arg-type]


def resnet56(num_classes: int = 10, **kw: object) -> CifarResNet:
    """ResNet-56 (n=9): 0.85 M params, ≈125 M MACs at 32×32."""
    return CifarResNet(56, num_classes, **kw)  # type: ignore[arg-type]


def resnet110(num_classes: int = 10, **kw: object) -> CifarResNet:
    """ResNet-110 (n=18): 1.7 M params."""
    return CifarResNet(110, num_classes, **kw)  # type: ignore[arg-type]
