"""VGG-16 with BatchNorm, CIFAR variant (Simonyan & Zisserman 2015; the CIFAR layout used by the
pruning literature, e.g. Li et al. 2017 / Network Slimming): 13 conv-BN-ReLU layers, 5 max-pools,
and a single linear classifier on the 512-d pooled feature. ≈15 M params, ≈314 M MACs at 32×32.
"""

from __future__ import annotations

import torch
from torch import nn

from .cifar_resnet import _init_weights

CFG_16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """Plain conv stack; ``cfg`` lists widths with ``"M"`` for 2×2 max-pool."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(in_ch, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16_bn(num_classes: int = 10) -> VGG:
    """VGG-16-BN for 32×32 inputs."""
    return VGG(list(CFG_16), num_classes)
