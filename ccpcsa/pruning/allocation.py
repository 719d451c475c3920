"""Allocation: in which order the blocks of all groups go — which decides how wide each layer ends up.

Every order here takes, for every group, its blocks in the group's own order (lowest scores first,
:meth:`ccpcsa.surgery.prune.ChannelPruner.group_blocks`), so every prefix of an order is a valid, aligned plan, and
the pruner removes the shortest prefix that reaches the target. The orders differ in how they interleave
the groups:

- ``global``: all blocks sorted by their mean (layer-normalized) score — the plain global sort of CCPCSA
  (Zhao et al., Electronics 2023, 12(7):1683, Algorithm 1: "sort all channels globally");
- ``cost``: a greedy knapsack on importance per cost — next is the block whose removal loses the least
  importance mass (Σ of its channels' scores) per unit of cost saved (MACs for a FLOPs target, milliseconds of
  the runtime's latency table for a latency target), as HALP's latency-saliency knapsack does (Shen et al.,
  NeurIPS 2022): layers whose channels are expensive and little used go first; a block that saves nothing
  goes last;
- ``latency``: ``cost`` priced in the target runtime's milliseconds (the latency table) even for a FLOPs target, so
  the MACs removed are the ones that take the most time — the most speedup per MAC (efficiency);
- ``params``: the same greedy knapsack priced in parameters instead: the least importance mass per weight removed
  goes first — layers with many weights per channel (the wide late layers) are thinned most, as QSFM's allocation
  on ResNet-56 does (58 % of the parameters for 48 % of the FLOPs, Wang et al., arXiv 2105.06052);
- ``sensitivity``: the same greedy knapsack with *observed* importance — a block's importance is the loss increase when
  it goes (:mod:`ccpcsa.sensitivity`: its channels silenced on a fixed set of train images) — priced in the target
  runtime's milliseconds: the blocks that cost least accuracy per millisecond saved go first, so a layer the model
  needs keeps its width however many MACs it has, and a layer the runtime spends time on but the model does not need
  loses whole blocks; ``sensitivity-macs``: the same priced in MACs (any runtime, no latency table);
- ``uniform``: every group loses the same fraction of its original width, in turn (the group with the
  smallest removed fraction goes next; ties by score) — the per-layer-ratio baseline.
"""

from __future__ import annotations

import numpy as np

from ..errors import unknown
from ..surgery.cost import CostModel
from ..surgery.prune import Block, ChannelPruner

ALLOCATIONS = ("global", "cost", "latency", "params", "uniform", "sensitivity", "sensitivity-macs")
#: allocations whose importance is the observed per-block loss increase (:func:`ccpcsa.sensitivity.block_sensitivity`)
SENSITIVITY_ALLOCATIONS = ("sensitivity", "sensitivity-macs")
#: allocations priced in the target runtime's milliseconds (they need its latency table)
NEEDS_LATENCY = ("latency", "sensitivity")


def removable_blocks(pruner: ChannelPruner, scores: dict[str, np.ndarray]) -> dict[str, list[Block]]:
    """Group key → its removable blocks in the group's own order (groups without a score or a block left out)."""
    queues = {g.key: pruner.group_blocks(g.key, scores[g.key]) for g in pruner.groups if g.key in scores}
    return {k: q for k, q in queues.items() if q}


def order_blocks(pruner: ChannelPruner, scores: dict[str, np.ndarray], allocation: str = "global",
                 cost: CostModel | None = None, sensitivity: dict[str, list[float]] | None = None) -> list[Block]:
    """All removable blocks of the scored groups in the order the ``allocation`` removes them (module docstring).
    ``cost`` is required by ``cost``, ``latency`` and the sensitivity allocations (MACs or latency) and ignored by the
    others; ``sensitivity`` (group key → each block's observed loss increase, :func:`removable_blocks` order) is
    required by :data:`SENSITIVITY_ALLOCATIONS`."""
    if allocation not in ALLOCATIONS:
        raise unknown("prune.steps.allocation", allocation, ALLOCATIONS)
    queues = removable_blocks(pruner, scores)
    if allocation == "global":
        return pruner.ranked_blocks(scores)
    if allocation == "uniform":
        return _uniform(pruner, queues)
    if allocation == "params":
        from ..surgery.cost import ParamsCost

        return _greedy(queues, ParamsCost(pruner), scores)
    if cost is None:
        raise ValueError(f"allocation '{allocation}' needs a cost model")
    if allocation in SENSITIVITY_ALLOCATIONS:
        if sensitivity is None:
            raise ValueError(f"allocation '{allocation}' needs the observed block sensitivity")
        return _greedy(queues, cost, scores, sensitivity)
    return _greedy(queues, cost, scores)


def _uniform(pruner: ChannelPruner, queues: dict[str, list[Block]]) -> list[Block]:
    removed = {k: pruner.original_sizes.get(k, pruner.group(k).size) - pruner.group(k).size for k in queues}  # earlier iterations
    pos = {k: 0 for k in queues}
    out: list[Block] = []
    while True:
        live = [k for k in queues if pos[k] < len(queues[k])]
        if not live:
            return out
        k = min(live, key=lambda k: (removed[k] / pruner.original_sizes.get(k, pruner.group(k).size), queues[k][pos[k]].score))
        b = queues[k][pos[k]]
        out.append(b)
        removed[k] += len(b.channels)
        pos[k] += 1


def _greedy(queues: dict[str, list[Block]], cost: CostModel, scores: dict[str, np.ndarray],
            sensitivity: dict[str, list[float]] | None = None) -> list[Block]:
    """Greedy importance-per-cost order. A block's importance mass is the sum of its channels' scores (with
    ``sensitivity``: its observed loss increase, floored at 0); its price is the cost it saves at the widths reached
    so far (only the groups sharing a layer with the last move are re-priced)."""
    widths = dict(cost.sizes)
    pos = {k: 0 for k in queues}
    touching_groups: dict[str, set[str]] = {}
    for layer in cost.layers:
        keys = {layer.out_key, *(k for k, _ in layer.in_parts)} - {None}
        for k in keys:
            touching_groups.setdefault(str(k), set()).update(str(x) for x in keys)
    ratio: dict[str, float] = {}

    def price(k: str) -> float:
        b = queues[k][pos[k]]
        saved = -cost.delta(widths, k, widths[k] - len(b.channels))
        mass = max(0.0, sensitivity[k][pos[k]]) if sensitivity is not None else float(np.sum(scores[k][b.channels]))
        return mass / saved if saved > 1e-12 else np.inf

    for k in queues:
        ratio[k] = price(k)
    out: list[Block] = []
    while ratio:
        k = min(ratio, key=lambda k: (ratio[k], queues[k][pos[k]].score))
        b = queues[k][pos[k]]
        out.append(b)
        widths[k] -= len(b.channels)
        pos[k] += 1
        if pos[k] >= len(queues[k]):
            del ratio[k]
        for j in touching_groups.get(k, set()) | {k}:
            if j in ratio:
                ratio[j] = price(j)
    return out
