"""A torchvision model whose forward torch-pruning cannot trace (for ``deploy_tests/test_torchvision_zoo.py``).

``resnet18_numpy_round_trip`` is torchvision's resnet18 with one step a user might add for a custom preprocessing or
a quantization experiment: after ``layer1`` the features go to numpy and back. The forward runs and gives the same
logits, but autograd no longer connects ``conv1`` … ``layer1`` to the output, so their channels cannot be followed: the
pipeline must end in one ``error:`` line naming the module after which the graph breaks (``layer1.0.1.bn2``:
the last BatchNorm of the original ``layer1``, now ``layer1.0``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ccpcsa.models import build_model


class NumpyRoundTrip(nn.Module):
    """``torch.from_numpy(x.detach().numpy())``: the same values, no autograd history."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.detach().cpu().numpy().copy()).to(x.device)


def resnet18_numpy_round_trip(num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """torchvision's resnet18 (``weights=None``) with :class:`NumpyRoundTrip` after ``layer1``."""
    model = build_model("torchvision.models:resnet18", num_classes, weights=None, **kwargs)
    model.layer1 = nn.Sequential(model.layer1, NumpyRoundTrip())  # type: ignore[assignment]
    return model
