"""A bring-your-own model used by the tests (resolved as ``deploy_tests.byo_model:tiny_net``)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Two conv stages with a residual add and a pooled classifier."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = self.head(self.down(x))
        return self.fc(self.pool(x).flatten(1))


def tiny_net(num_classes: int = 10, width: int = 16) -> TinyNet:
    """Factory in ``package.module:factory`` form."""
    return TinyNet(num_classes, width)


class Residual(nn.Sequential):
    """``relu(x + body(x))``: a block that carries its own skip connection, so ``prune.depth.drop_blocks`` can remove it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 — the class docstring states it
        return torch.relu(x + super().forward(x))


class TinyResNet(TinyNet):
    """TinyNet with its residual add inside ``block`` (same weights and names: ``block.0``, ``block.1``)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__(num_classes, width)
        self.block = Residual(*self.block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 — TinyNet's computation
        x = self.block(self.stem(x))
        x = self.head(self.down(x))
        return self.fc(self.pool(x).flatten(1))


def tiny_resnet(num_classes: int = 10, width: int = 16) -> TinyResNet:
    """Factory in ``package.module:factory`` form (TinyNet whose block holds its own skip)."""
    return TinyResNet(num_classes, width)
