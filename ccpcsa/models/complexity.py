"""FLOPs (as MACs) and parameter counts, via torch-pruning's counter (``tp.utils.count_ops_and_params``).

MACs are multiply-accumulates of one forward pass on one image; "FLOPs" in this project's reports
means MACs, as in the pruning literature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from ..placement import example_input


@dataclass(frozen=True)
class Complexity:
    """MACs per image and parameter count of a model."""

    macs: int
    params: int

    def reduction_vs(self, base: Complexity) -> tuple[float, float]:
        """Fractional (MACs, params) reduction relative to ``base``: 1 − self/base."""
        return 1.0 - self.macs / base.macs, 1.0 - self.params / base.params


def count_complexity(model: nn.Module, input_size: int = 32, in_channels: int = 3) -> Complexity:
    """Count MACs of one forward pass at ``1×C×S×S`` and all parameters. Leaves train/eval mode as it was."""
    was_training = model.training
    model.eval()
    example = example_input(model, input_size, in_channels)  # the model's device and dtype, wherever it lives
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return Complexity(int(macs), int(params))
