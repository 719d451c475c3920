"""Per-block sensitivity: how much the loss rises when a block of channels goes, observed, not estimated.

For every prunable group ``g`` and its removable blocks ``b_1, b_2, …`` in the group's own order
(:meth:`ccpcsa.surgery.prune.ChannelPruner.group_blocks`, lowest criterion scores first), the probe silences the first ``k``
blocks (:meth:`ChannelPruner.silenced`: their channels carry exactly 0, as after their removal) and measures the mean
cross-entropy ``L_k`` of the model in eval mode on a fixed set of train images (no augmentation). The sensitivity of
block ``b_k`` is its marginal damage ``s(b_k) = L_k − L_{k−1}`` (``L_0``: nothing silenced), other groups intact —
the first-order, one-group-at-a-time probe of layer-wise sensitivity analysis (Li et al., "Pruning Filters for
Efficient ConvNets", ICLR 2017, §4.2, there per layer and by accuracy; here per block and by loss). Cost: one forward
pass of the probe images per block (resnet20 at 8-channel blocks: ~50 blocks; resnet56: ~110).

An allocation then removes first the blocks that cost least loss per millisecond (or MAC) saved
(:mod:`ccpcsa.pruning.allocation`, ``sensitivity`` / ``sensitivity-macs``): a layer the model needs keeps its width, a cheap
wide layer that the runtime spends time on gives up whole blocks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .. import placement
from ..models.outputs import main_logits
from ..surgery.prune import Block, ChannelPruner, plan_from_blocks


@torch.no_grad()
def _loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    total, n = 0.0, 0
    for x, y in batches:
        logits = main_logits(model(placement.inputs_for(model, x))).float()
        total += float(F.cross_entropy(logits, y.to(logits.device), reduction="sum"))
        n += int(y.shape[0])
    return total / max(1, n)


def block_sensitivity(pruner: ChannelPruner, queues: dict[str, list[Block]],
                      batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list[float]]:
    """Group key → the marginal loss increase of each of its blocks in ``queues[key]`` (module docstring), observed on
    ``batches`` (normalized images and labels; materialized once). The model is left as it was, in eval mode."""
    data = list(batches)
    model = pruner.model
    was = model.training
    model.eval()
    try:
        base = _loss(model, data)
        out: dict[str, list[float]] = {}
        for key, blocks in queues.items():
            prev, marg = base, []
            for k in range(1, len(blocks) + 1):
                with pruner.silenced(plan_from_blocks(blocks[:k])):
                    cur = _loss(model, data)
                marg.append(cur - prev)
                prev = cur
            out[key] = marg
    finally:
        model.train(was)
    return out
