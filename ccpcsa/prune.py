"""The only place that does surgery: physical channel removal through torch-pruning's DepGraph.

A *group* is a set of coupled channels found by the dependency graph (Fang et al., "DepGraph",
CVPR 2023): removing channel k of the group's root conv also removes the matching channel of every
BN, BAM, residual partner, depthwise conv and consumer input in the group, so tensors really shrink
and stay consistent. A *block* is ``round_to`` channels of one group — the unit this pruner removes,
so that every layer keeps a channel count that is a multiple of ``round_to`` (aligned kernels).

Selection is global: criteria give a score per channel of each group (low = prune first); blocks
are formed from each group's lowest-scoring channels and sorted by mean score across groups. A
group never drops below ``max(min_channels, ceil((1 − max_layer_ratio) · original))`` channels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .attention import BAM
from .models.complexity import Complexity, count_complexity


class BAMPruner(tp.pruner.function.BasePruningFunc):
    """torch-pruning handler for :class:`BAM`: its input and output channels are the same (coupled)
    channels, so pruning channel k removes column k of the channel MLP's first Linear, row k of its
    last Linear, and input channel k of the spatial gate's first 1×1 conv."""

    TARGET_MODULES = (BAM,)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        assert isinstance(layer, BAM)
        keep = sorted(set(range(layer.channels)) - set(int(i) for i in idxs))
        k = torch.tensor(keep, dtype=torch.long, device=layer.channel_gate.fc1.weight.device)
        fc1, fc2 = layer.channel_gate.fc1, layer.channel_gate.fc2
        fc1.weight = nn.Parameter(fc1.weight.data.index_select(1, k).clone())
        fc1.in_features = len(keep)
        fc2.weight = nn.Parameter(fc2.weight.data.index_select(0, k).clone())
        fc2.bias = nn.Parameter(fc2.bias.data.index_select(0, k).clone())
        fc2.out_features = len(keep)
        conv = layer.spatial_gate.reduce[0]
        assert isinstance(conv, nn.Conv2d)
        conv.weight = nn.Parameter(conv.weight.data.index_select(1, k).clone())
        conv.in_channels = len(keep)
        layer.channels = len(keep)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        assert isinstance(layer, BAM)
        return layer.channels

    get_in_channels = get_out_channels


@dataclass
class GroupInfo:
    """One prunable group: ``key`` (root module name), ``size`` (current channels), ``members``
    (names of the modules whose *output* channels the group removes: convs, BNs, BAMs, linears)."""

    key: str
    size: int
    members: list[str]
    member_channel_index: dict[str, list[int]] = field(default_factory=dict)  # member → its channel index per root channel


def _classifier(model: nn.Module) -> list[nn.Module]:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and not _inside_bam(model, m)]
    return linears[-1:] if linears else []


def _inside_bam(model: nn.Module, module: nn.Module) -> bool:
    return any(module in list(b.modules()) for b in model.modules() if isinstance(b, BAM))


class ChannelPruner:
    """Dependency-graph view of a model: its prunable groups and the surgery that removes channels."""

    def __init__(self, model: nn.Module, input_size: int = 32, round_to: int = 8, min_channels: int = 8,
                 max_layer_ratio: float = 0.9, original_sizes: dict[str, int] | None = None,
                 ignored_layers: Sequence[nn.Module] = ()) -> None:
        if round_to < 1:
            raise ValueError(f"round_to must be ≥ 1, got {round_to}")
        if not 0 <= max_layer_ratio < 1:
            raise ValueError(f"max_layer_ratio must be in [0, 1), got {max_layer_ratio}")
        self.model = model
        self.input_size = input_size
        self.round_to = round_to
        self.min_channels = min_channels
        self.max_layer_ratio = max_layer_ratio
        self.ignored = list(ignored_layers) + _classifier(model)
        self._build()
        self.original_sizes = dict(original_sizes) if original_sizes else {g.key: g.size for g in self.groups}

    def _build(self) -> None:
        device = next(self.model.parameters()).device
        example = torch.zeros(1, 3, self.input_size, self.input_size, device=device)
        was = self.model.training
        self.model.eval()
        self.dg = tp.DependencyGraph().build_dependency(
            self.model, example, customized_pruners={BAM: BAMPruner()}, verbose=False)
        self.model.train(was)
        names = {m: n for n, m in self.model.named_modules()}
        self._roots: dict[str, nn.Module] = {}
        self.groups: list[GroupInfo] = []
        for group in self.dg.get_all_groups(ignored_layers=self.ignored, root_module_types=(nn.Conv2d, nn.Linear)):
            root = group[0].dep.target.module
            key = names[root]
            size = int(self.dg.get_pruner_of_module(root).get_out_channels(root))
            info = GroupInfo(key, size, [])
            for item in group:
                dep = item.dep
                mod = dep.target.module
                if not isinstance(mod, nn.Module) or mod not in names:
                    continue
                if self.dg.is_out_channel_pruning_fn(dep.handler) or isinstance(mod, (nn.BatchNorm2d, BAM)):
                    n = names[mod]
                    if n not in info.member_channel_index:
                        index = np.full(size, -1, dtype=np.int64)
                        index[np.asarray(item.root_idxs, dtype=np.int64)] = np.asarray(item.idxs, dtype=np.int64)
                        info.members.append(n)
                        info.member_channel_index[n] = index.tolist()
            self._roots[key] = root
            self.groups.append(info)

    def tp_groups(self) -> dict[str, tp.Group]:
        """Group key → torch-pruning ``Group`` with all channels (for torch-pruning importances)."""
        out = {}
        for key, root in self._roots.items():
            fn = self.dg.get_pruner_of_module(root).prune_out_channels
            out[key] = self.dg.get_pruning_group(root, fn, list(range(self.group(key).size)))
        return out

    def group(self, key: str) -> GroupInfo:
        """The group whose root module is named ``key``."""
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(key)

    def floor(self, key: str) -> int:
        """Fewest channels group ``key`` may keep."""
        orig = self.original_sizes.get(key, self.group(key).size)
        return max(min(self.min_channels, orig), math.ceil((1 - self.max_layer_ratio) * orig))

    def ranked_blocks(self, scores: dict[str, np.ndarray]) -> list[tuple[float, str, list[int]]]:
        """All removable blocks ``(mean score, group key, channel indices)`` in ascending score order.

        Within a group, channels are sorted by score and cut into blocks so the remaining count stays
        a multiple of ``round_to`` (the first block absorbs the remainder); block means are therefore
        non-decreasing within a group, and any prefix of the global order removes a prefix of every
        group's sorted channels. Groups without a score are not pruned.
        """
        blocks: list[tuple[float, str, list[int]]] = []
        for g in self.groups:
            if g.key not in scores:
                continue
            s = np.asarray(scores[g.key], dtype=np.float64)
            if s.shape != (g.size,):
                raise ValueError(f"score for group {g.key} has shape {s.shape}, expected ({g.size},)")
            order = np.argsort(s, kind="stable")
            removable = g.size - self.floor(g.key)
            pos, first = 0, g.size % self.round_to
            while True:
                step = first if (pos == 0 and first) else self.round_to
                if pos + step > removable:
                    break
                idx = order[pos:pos + step]
                blocks.append((float(s[idx].mean()), g.key, [int(i) for i in idx]))
                pos += step
        blocks.sort(key=lambda b: b[0])
        return blocks

    def apply(self, plan: dict[str, list[int]]) -> None:
        """Remove the listed output channels (root-module indices) of each group, then rebuild the graph."""
        for key, idxs in plan.items():
            if not idxs:
                continue
            root = self._roots[key]
            fn = self.dg.get_pruner_of_module(root).prune_out_channels
            group = self.dg.get_pruning_group(root, fn, sorted(set(idxs)))
            if not self.dg.check_pruning_group(group):
                raise ValueError(f"pruning {len(idxs)} channels of {key} would empty a layer")
            group.prune()
        self._build()


def plan_from_blocks(blocks: Sequence[tuple[float, str, list[int]]]) -> dict[str, list[int]]:
    """Merge blocks into ``{group key: channel indices}``."""
    plan: dict[str, list[int]] = {}
    for _, key, idxs in blocks:
        plan.setdefault(key, []).extend(idxs)
    return plan


def prune_to_target(pruner: ChannelPruner, scores: dict[str, np.ndarray], *, blocks: int | None = None,
                    target_macs: float | None = None,
                    before_apply: Callable[[dict[str, list[int]]], None] | None = None) -> tuple[dict[str, list[int]], Complexity]:
    """Prune ``pruner.model`` in place: the ``blocks`` lowest blocks, or the fewest lowest blocks that bring
    MACs down to ``target_macs`` (:func:`fewest_blocks`). ``before_apply(plan)`` runs on the chosen plan just
    before the surgery (e.g. weight compensation while channel indices are still valid). Returns the
    applied plan and the new complexity.
    """
    if blocks is None and target_macs is None:
        raise ValueError("give blocks or target_macs")
    ranked = pruner.ranked_blocks(scores)
    k = min(blocks, len(ranked)) if blocks is not None else fewest_blocks(pruner, scores, float(target_macs))  # type: ignore[arg-type]
    plan = plan_from_blocks(ranked[:k])
    if before_apply is not None:
        before_apply(plan)
    pruner.apply(plan)
    return plan, count_complexity(pruner.model, pruner.input_size)


def _macs_after(pruner: ChannelPruner, ranked: list[tuple[float, str, list[int]]], n: int) -> int:
    """MACs of a copy of ``pruner.model`` with the first ``n`` ranked blocks removed (one DepGraph build)."""
    trial = copy.deepcopy(pruner.model)
    p = ChannelPruner(trial, pruner.input_size, pruner.round_to, pruner.min_channels, pruner.max_layer_ratio,
                      pruner.original_sizes, [])
    mods = dict(trial.named_modules())
    for key, idxs in plan_from_blocks(ranked[:n]).items():
        root = mods[key]
        group = p.dg.get_pruning_group(root, p.dg.get_pruner_of_module(root).prune_out_channels, sorted(set(idxs)))
        group.prune()
    return count_complexity(trial, pruner.input_size).macs


def channel_costs(pruner: ChannelPruner) -> dict[str, float]:
    """First-order MACs of one channel of each group: Σ over the group's convs/linears of the MACs that one
    output channel (``k_h k_w · C_in/groups · H_out W_out``) or one input channel (``k_h k_w · C_out/groups ·
    H_out W_out``) costs; a depthwise conv counts ``k_h k_w · H_out W_out`` once."""
    model = pruner.model
    names = {m: n for n, m in model.named_modules()}
    hw: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, _n=n: hw.__setitem__(_n, int(o.shape[2] * o.shape[3])))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            dev = next(model.parameters()).device
            model(torch.zeros(1, 3, pruner.input_size, pruner.input_size, device=dev))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    costs: dict[str, float] = {}
    for key, group in pruner.tp_groups().items():
        cost, seen = 0.0, set()
        for item in group:
            mod = item.dep.target.module
            name = names.get(mod) if isinstance(mod, nn.Module) else None
            if name is None or not isinstance(mod, (nn.Conv2d, nn.Linear)):
                continue
            out_fn = pruner.dg.is_out_channel_pruning_fn(item.dep.handler)
            tag = (name, out_fn)
            if tag in seen:
                continue
            seen.add(tag)
            if isinstance(mod, nn.Linear):
                cost += mod.in_features if out_fn else mod.out_features
                continue
            k = mod.kernel_size[0] * mod.kernel_size[1] * hw.get(name, 1)
            if mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels:
                if (name, not out_fn) not in seen:
                    cost += k
            else:
                cost += k * (mod.in_channels if out_fn else mod.out_channels) / mod.groups
        costs[key] = cost
    return costs


def fewest_blocks(pruner: ChannelPruner, scores: dict[str, Any], target_macs: float) -> int:
    """Smallest ``k`` such that removing the ``k`` lowest blocks of ``pruner.ranked_blocks(scores)`` gives MACs ≤
    ``target_macs`` (all blocks if none does): the answer of :func:`prune_to_target`'s bisection (MACs fall
    monotonically with ``k``) with fewer trial surgeries. Each probe inverts the first-order estimate
    ``MACs(k) ≈ MACs₀ − c · Σ_{b<k} |b| · cost(group_b)`` (:func:`channel_costs`; ``c`` re-fitted on the last
    trial, since removing a layer's input and output channels together saves less than the sum) and then
    checks the neighbour; after 4 rounds it falls back to bisection."""
    ranked = pruner.ranked_blocks(scores)
    costs = channel_costs(pruner)
    est = np.concatenate([[0.0], np.cumsum([len(idx) * costs.get(key, 0.0) for _, key, idx in ranked])])
    base = count_complexity(pruner.model, pruner.input_size).macs
    cache: dict[int, int] = {0: base}

    def f(n: int) -> int:
        if n not in cache:
            cache[n] = _macs_after(pruner, ranked, n)
        return cache[n]

    lo, hi = 0, len(ranked)  # invariant: f(lo) > target; the answer lies in (lo, hi]
    if base <= target_macs or hi == 0:
        return 0
    c = 1.0
    rounds = 0
    while hi - lo > 1:
        if rounds < 4:
            g = int(np.searchsorted(est, (base - target_macs) / c, side="left"))
            g = min(hi - 1, max(lo + 1, g))
        else:
            g = (lo + hi) // 2
        rounds += 1
        fg = f(g)
        if est[g] > 0 and base > fg:
            c = (base - fg) / est[g]
        if fg <= target_macs:
            hi = g
            if g - 1 > lo and f(g - 1) > target_macs:
                lo = g - 1
        else:
            lo = g
            if g + 1 < hi and f(g + 1) <= target_macs:
                hi = g + 1
    return hi


def channels_per_layer(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv2d (name → count), for reports and determinism checks."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
