"""The only place that does surgery: physical channel removal through torch-pruning's DepGraph.

A *group* is a set of coupled channels found by the dependency graph (Fang et al., "DepGraph",
CVPR 2023): removing channel k of the group's root conv also removes the matching channel of every
BN, BAM, residual partner, depthwise conv, concat/split slice and consumer input in the group, so
tensors really shrink and stay consistent. A *block* is the unit this pruner removes from one group:
``round_to`` channels (the runtime's alignment, see :mod:`ccpcsa.surgery.alignment`), so every pruned layer keeps
a width that is a multiple of the alignment; a layer narrower than one block keeps its width.

Grouped convolutions (``1 < groups < channels``) must lose the same channels from every one of their
``G`` channel slices, or the slices stop being equal (torch-pruning's ``MetaPruner`` does the same with
its ``ch_groups``): a group whose channels feed or leave a grouped conv therefore removes each block's
offsets from all ``G`` slices at once, and its kept width is a multiple of ``lcm(round_to, G)``. A group
split into ``P`` equal parts (``torch.chunk``) is treated the same way with ``P`` slices, so the parts stay equal. A group
that covers only some slices of a grouped conv (e.g. one branch of a concat feeding it) cannot be
pruned consistently on its own: it is left whole and :attr:`ChannelPruner.fixed` says why.

Which blocks go is the allocation's business (:mod:`ccpcsa.pruning.allocation`); criteria score channels
(:mod:`ccpcsa.criteria`). :meth:`ChannelPruner.ranked_blocks` is the plain global order: blocks of every
group, sorted by their mean score.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ..errors import UserError, first_line
from ..models.attention import BAM
from ..models.complexity import Complexity, count_complexity
from ..placement import example_input
from .depgraph import (
    ModuleTrace,
    cross_channel_reshapes,
    downstream_op,
    frozen_index_mapping,
    iter_groups,
    prune_groups_together,
    tolerant_reshape_mapping,
)


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


#: ``all``: every group; ``internal``: residual streams (groups joined by an add) are left whole.
SCOPES = ("all", "internal")


class Block(NamedTuple):
    """One removable unit: the mean score of its channels, its group's key, the channels (root-module indices)."""

    score: float
    key: str
    channels: list[int]


@dataclass
class GroupInfo:
    """One prunable group: ``key`` (root module name), ``size`` (current channels), ``members`` (names of the
    modules whose *output* channels the group removes: convs, BNs, BAMs, linears), ``member_channel_index``
    (member → its channel index per root channel, −1 where it has none) and ``ch_groups`` (the number of equal
    slices every removal must hit alike: the lcm of the ``groups`` of the grouped convs in the group, 1 without)."""

    key: str
    size: int
    members: list[str]
    member_channel_index: dict[str, list[int]] = field(default_factory=dict)
    ch_groups: int = 1


def _classifier(model: nn.Module) -> list[nn.Module]:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and not _inside_bam(model, m)]
    return linears[-1:] if linears else []


def _inside_bam(model: nn.Module, module: nn.Module) -> bool:
    return any(module in list(b.modules()) for b in model.modules() if isinstance(b, BAM))


def _is_grouped_conv(m: nn.Module) -> bool:
    """A conv with ``1 < groups`` that is not depthwise (depthwise convs shrink with their input; no slices)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


class ChannelPruner:
    """Dependency-graph view of a model: its prunable groups and the surgery that removes channels.

    ``round_to`` is the alignment (kept widths are multiples of it); ``wide_round_to`` (optional) a coarser one for
    the groups whose original width holds at least two of its blocks (:meth:`unit`); ``min_channels``/``max_layer_ratio`` the
    per-group floor, ``original_sizes`` the group widths the floors refer to (kept across iterations), ``scope`` which
    groups may be pruned at all (:data:`SCOPES`)."""

    def __init__(self, model: nn.Module, input_size: int = 32, round_to: int = 8, min_channels: int = 8,
                 max_layer_ratio: float = 0.9, original_sizes: dict[str, int] | None = None,
                 ignored_layers: Sequence[nn.Module] = (), scope: str = "all", wide_round_to: int | None = None) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.scope = scope
        if round_to < 1:
            raise ValueError(f"round_to must be ≥ 1, got {round_to}")
        if wide_round_to is not None and wide_round_to < 1:
            raise ValueError(f"wide_round_to must be ≥ 1 or None, got {wide_round_to}")
        if not 0 <= max_layer_ratio < 1:
            raise ValueError(f"max_layer_ratio must be in [0, 1), got {max_layer_ratio}")
        self.model = model
        self.input_size = input_size
        self.round_to = round_to
        self.wide_round_to = wide_round_to
        self.min_channels = min_channels
        self.max_layer_ratio = max_layer_ratio
        self.ignored = list(ignored_layers) + _classifier(model)
        self._build()
        self.original_sizes = dict(original_sizes) if original_sizes else {g.key: g.size for g in self.groups}

    def _build(self) -> None:
        example = example_input(self.model, self.input_size)
        was = self.model.training
        self.model.eval()
        unmapped: list[nn.Module] = []  # reshapes torch-pruning could not map (their groups are left whole)
        with ModuleTrace(self.model) as seen:
            try:
                with tolerant_reshape_mapping(unmapped):
                    self.dg = tp.DependencyGraph().build_dependency(
                        self.model, example, customized_pruners={BAM: BAMPruner()}, verbose=False)
            except Exception as exc:  # a forward torch-pruning cannot trace: a property of the user's model
                raise self._untraceable(f"{type(exc).__name__}: {first_line(exc)}", seen.running[-1:]) from exc
            finally:
                self.model.train(was)
        mods = dict(self.model.named_modules())
        skipped = {id(m) for m in self.dg.IGNORED_LAYERS_IN_TRACING}
        lost = [n for n in seen.executed if isinstance(mods[n], (nn.Conv2d, nn.Linear, nn.BatchNorm2d))
                and mods[n] not in self.dg.module2node and id(mods[n]) not in skipped]
        if lost:  # it ran, but autograd does not connect it to the output: its channels cannot be followed
            raise self._untraceable("it ran but its output does not reach the model's output through autograd (a "
                                    ".detach(), .numpy() or .item() round trip, or torch.no_grad(), after it in the "
                                    "forward)", lost[-1:])
        shuffles = cross_channel_reshapes(self.dg, unmapped)
        names = {m: n for n, m in self.model.named_modules()}
        self._roots: dict[str, nn.Module] = {}
        self.groups: list[GroupInfo] = []
        self.fixed: dict[str, str] = {}
        with frozen_index_mapping():  # the mappings build_dependency computed hold while the graph is only read
            all_groups = list(iter_groups(self.dg, self.ignored, (nn.Conv2d, nn.Linear)))
        for root, group, failure in all_groups:
            key = names[root]
            if group is None:
                shuffle = downstream_op(self.dg, root, shuffles)
                self.fixed[key] = failure if shuffle is None else self._shuffle_reason(shuffle, shuffles[shuffle], names)
                continue
            if any(isinstance(item.dep.target.module, tp.ops._OutputOp) for item in group):
                continue  # its channels are the model's outputs (a conv classifier, as in SqueezeNet): never pruned
            size = int(self.dg.get_pruner_of_module(root).get_out_channels(root))
            info = GroupInfo(key, size, [])
            slices = self._members(info, group, size, names)
            info.ch_groups = math.lcm(*slices) if slices else 1
            shuffle = next((item.dep.target.module for item in group if item.dep.target.module in shuffles), None)
            if shuffle is not None:
                self.fixed[key] = self._shuffle_reason(shuffle, shuffles[shuffle], names)
            if self.scope == "internal" and any(isinstance(it.dep.target.module, tp.ops._ElementWiseOp)
                                                and str(it.dep.target.module._grad_fn).startswith(("AddBackward", "SubBackward"))
                                                for it in group):
                self.fixed.setdefault(key, "it is a residual stream (prune.widths.scope=internal prunes block-internal channels only)")
            if size % info.ch_groups:
                self.fixed[key] = f"its {size} channels do not split into the {info.ch_groups} slices of its grouped convs"
            self._roots[key] = root
            self.groups.append(info)

    def _members(self, info: GroupInfo, group: Any, size: int, names: dict[nn.Module, str]) -> list[int]:
        """Fill ``info``'s members (each layer whose output channels are the group's, with its channel index) from a
        torch-pruning ``group`` of ``size`` channels; return the slice counts its channels must be removed alike from
        (equal chunks of a split, a grouped conv's groups). Reasons to leave the group whole go to ``self.fixed``."""
        key = info.key
        slices: list[int] = []
        for item in group:
            dep = item.dep
            mod = dep.target.module
            if isinstance(mod, (tp.ops._SplitOp, tp.ops._UnbindOp)):
                sizes = list(mod.split_sizes or [])
                idxs = list(item.idxs)
                if len(set(sizes)) == 1 and sorted(idxs) == list(range(sum(sizes))) and size == sum(sizes):
                    slices.append(len(sizes))  # chunk/unbind into equal parts: remove alike from every part
                else:
                    self.fixed[key] = "it is split into unequal parts (torch.split with fixed sizes)"
                continue
            if not isinstance(mod, nn.Module) or mod not in names:
                continue
            if isinstance(mod, (nn.LayerNorm, nn.GroupNorm)):  # statistics over channels: a removed channel, even
                self.fixed.setdefault(key, f"its channels are normalized together by {type(mod).__name__} "  # at 0,
                                      f"'{names[mod]}' (removing one changes the others)")  # moves the others
            out_fn = self.dg.is_out_channel_pruning_fn(dep.handler)
            if _is_grouped_conv(mod):
                assert isinstance(mod, nn.Conv2d)
                width = mod.out_channels if out_fn else mod.in_channels
                idxs, roots = list(item.idxs), list(item.root_idxs)
                if sorted(idxs) != list(range(width)) or idxs != roots or size != width:
                    self.fixed[key] = (f"its channels reach only part of grouped conv '{names[mod]}' "
                                       f"(groups={mod.groups}) through a concat or split")
                slices.append(mod.groups)
            if out_fn or isinstance(mod, (nn.BatchNorm2d, BAM)):
                n = names[mod]
                if n not in info.member_channel_index:
                    index = np.full(size, -1, dtype=np.int64)
                    index[np.asarray(item.root_idxs, dtype=np.int64)] = np.asarray(item.idxs, dtype=np.int64)
                    info.members.append(n)
                    info.member_channel_index[n] = index.tolist()
        return slices

    def _untraceable(self, why: str, where: list[str]) -> UserError:
        """The one-line error for a forward torch-pruning cannot trace, naming the module (``where``) when known."""
        mods = dict(self.model.named_modules())
        at = f" at module '{where[0]}' ({type(mods[where[0]]).__name__})" if where else ""
        return UserError(f"cannot trace the model's channel dependencies with torch-pruning{at}: {why}; pruning needs a "
                         "forward pass of plain tensor operations")

    def _shuffle_reason(self, op: nn.Module, shapes: str, names: dict[nn.Module, str]) -> str:
        where = next((names[n.module] for n in self.dg.module2node[op].inputs if n.module in names), "")
        return (f"its channels pass through a reshape {shapes}{f' after {where!r}' if where else ''} that moves them "
                "across channels (a channel shuffle)")

    def tp_groups(self) -> dict[str, tp.Group]:
        """Group key → torch-pruning ``Group`` with all channels (for torch-pruning importances)."""
        out = {}
        with frozen_index_mapping():
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

    def unit(self, key: str) -> int:
        """Kept widths of group ``key`` are multiples of this: ``lcm(a, ch_groups)`` with ``a = lcm(round_to,
        wide_round_to)`` when the group's original width is at least ``2 · wide_round_to`` (it can keep one such block
        and lose another), else ``a = round_to``. E.g. ``round_to`` 8, ``wide_round_to`` 16: a 16-wide layer may go to
        8, a 32- or 64-wide one moves in 16s (what onnxruntime's x86 INT8 kernels run unpadded)."""
        a = self.round_to
        if self.wide_round_to is not None and self.original_sizes.get(key, self.group(key).size) >= 2 * self.wide_round_to:
            a = math.lcm(a, self.wide_round_to)
        return math.lcm(a, self.group(key).ch_groups)

    def floor(self, key: str) -> int:
        """Fewest channels group ``key`` may keep: ``max(min(min_channels, original), ⌈(1 − max_layer_ratio)·original⌉)``,
        rounded up to a multiple of its ``ch_groups``."""
        orig = self.original_sizes.get(key, self.group(key).size)
        f = max(min(self.min_channels, orig), math.ceil((1 - self.max_layer_ratio) * orig))
        g = self.group(key).ch_groups
        return -(-f // g) * g

    def group_blocks(self, key: str, score: np.ndarray) -> list[Block]:
        """Removable blocks of group ``key`` in the order they go: lowest scores first, each block keeping the
        remaining width a multiple of :meth:`unit` (the first block takes the remainder); none below the floor,
        none for a group in :attr:`fixed`. With ``ch_groups = G > 1`` channel ``o`` of every slice is scored by
        the mean over the ``G`` slices and removed from all of them together.

        Prefixes of the returned list are exactly the removals a group can make, so any allocation that takes a
        prefix of every group's list keeps every layer aligned and every grouped conv consistent."""
        g = self.group(key)
        s = np.asarray(score, dtype=np.float64)
        if s.shape != (g.size,):
            raise ValueError(f"score for group {key} has shape {s.shape}, expected ({g.size},)")
        if key in self.fixed:
            return []
        G = g.ch_groups
        per = g.size // G
        offset_score = s.reshape(G, per).mean(0)
        order = np.argsort(offset_score, kind="stable")
        step_off = self.unit(key) // G
        removable_off = (g.size - self.floor(key)) // G
        blocks: list[Block] = []
        pos, first = 0, per % step_off
        while True:
            step = first if (pos == 0 and first) else step_off
            if pos + step > removable_off:
                break
            offs = order[pos:pos + step]
            idx = sorted(int(sl * per + o) for sl in range(G) for o in offs)
            blocks.append(Block(float(s[idx].mean()), key, idx))
            pos += step
        return blocks

    def ranked_blocks(self, scores: dict[str, np.ndarray]) -> list[Block]:
        """All removable blocks in ascending mean-score order (the plain global sort). Block means are
        non-decreasing within a group, so any prefix removes a prefix of every group's blocks. Groups without a
        score are not pruned."""
        blocks = [b for g in self.groups if g.key in scores for b in self.group_blocks(g.key, scores[g.key])]
        blocks.sort(key=lambda b: b.score)
        return blocks

    @contextlib.contextmanager
    def silenced(self, plan: dict[str, list[int]]) -> Iterator[None]:
        """Inside the block, the channels of ``plan`` (group key → root-module channel indices) carry exactly 0: every
        member conv/linear/BN of their groups has those output rows (weight and bias; BN's γ and β) set to 0 — what the
        removal of those channels computes, before any compensation or BN re-estimation. Restored on exit."""
        mods = dict(self.model.named_modules())
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            with torch.no_grad():
                for key, idxs in plan.items():
                    g = self.group(key)
                    for name in g.members:
                        m = mods[name]
                        if not isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                            continue  # BAM and the like: their input channels are already 0
                        rows = [g.member_channel_index[name][i] for i in idxs if g.member_channel_index[name][i] >= 0]
                        for t in (m.weight, m.bias):
                            if t is not None and rows:
                                saved.append((t, t.detach().clone()))
                                t[rows] = 0
            yield
        finally:
            with torch.no_grad():
                for t, old in reversed(saved):
                    t.copy_(old)

    def widths(self) -> dict[str, int]:
        """Current width of every group."""
        return {g.key: g.size for g in self.groups}

    def apply(self, plan: dict[str, list[int]]) -> None:
        """Remove the listed output channels (root-module indices) of each group, then rebuild the graph.

        Every group is computed on the graph as traced (torch-pruning's concat/split offsets describe that layout) and
        all are removed in one pass, each module once (:func:`ccpcsa.surgery.depgraph.prune_groups_together`)."""
        todo = {k: sorted(set(int(i) for i in v)) for k, v in plan.items() if v}
        groups = []
        with frozen_index_mapping():  # every group on the graph as traced: one index space, concat offsets included
            for key, idxs in todo.items():
                root = self._roots[key]
                fn = self.dg.get_pruner_of_module(root).prune_out_channels
                group = self.dg.get_pruning_group(root, fn, idxs)
                if not self.dg.check_pruning_group(group):
                    raise ValueError(f"pruning {len(idxs)} channels of {key} would empty a layer")
                groups.append(group)
        prune_groups_together(self.dg, groups)
        self._build()


def plan_from_blocks(blocks: Sequence[Block | tuple[float, str, list[int]]]) -> dict[str, list[int]]:
    """Merge blocks into ``{group key: channel indices}``."""
    plan: dict[str, list[int]] = {}
    for _, key, idxs in blocks:
        plan.setdefault(key, []).extend(idxs)
    return plan


def deployed_complexity(model: nn.Module, input_size: int, exclude_attention: bool = False) -> Complexity:
    """MACs and parameters of ``model``; with ``exclude_attention`` of the model as deployed without its BAM modules
    (counted on a detached copy, the model itself is untouched)."""
    from ..models.attention import detach_bam

    if exclude_attention and any(isinstance(m, BAM) for m in model.modules()):
        model = copy.deepcopy(model)
        detach_bam(model)
    return count_complexity(model, input_size)


def macs_after(pruner: ChannelPruner, plan: dict[str, list[int]], exclude_attention: bool = False) -> int:
    """MACs of a copy of ``pruner.model`` with ``plan`` removed (the real counter on a real trial surgery; without BAM
    when ``exclude_attention``)."""
    trial = copy.deepcopy(pruner.model)
    p = ChannelPruner(trial, pruner.input_size, pruner.round_to, pruner.min_channels, pruner.max_layer_ratio,
                      pruner.original_sizes, [], wide_round_to=pruner.wide_round_to)
    p.apply(plan)
    return deployed_complexity(trial, pruner.input_size, exclude_attention).macs


def metapruner_to_target(model: nn.Module, input_size: int, target_macs: float, *, round_to: int = 1,
                         max_layer_ratio: float = 0.9, exclude_attention: bool = False) -> Complexity:
    """Torch-Pruning's own pruner as an external reference: ``tp.pruner.MetaPruner`` with its default
    ``GroupMagnitudeImportance`` (L2, group mean, mean-normalized), ``global_pruning=True``, ``round_to``, at most
    ``max_layer_ratio`` of any layer, the classifier kept — with the global channel ratio bisected (on trial copies)
    so the MACs (without BAM when ``exclude_attention``) come as close to ``target_macs`` from below as 12 halvings
    get. Prunes ``model`` in place and returns its complexity."""

    def run(m: nn.Module, ratio: float) -> None:
        tp.pruner.MetaPruner(m, example_input(m, input_size), importance=tp.importance.GroupMagnitudeImportance(),
                             global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=max_layer_ratio, round_to=round_to,
                             ignored_layers=_classifier(m), customized_pruners={BAM: BAMPruner()}).step()

    def macs(ratio: float) -> int:
        trial = copy.deepcopy(model)
        run(trial, ratio)
        return deployed_complexity(trial, input_size, exclude_attention).macs

    lo, hi = 0.0, max_layer_ratio  # macs(lo) > target ≥ macs(hi) is not guaranteed at hi: then hi it is
    if deployed_complexity(model, input_size, exclude_attention).macs <= target_macs:
        return count_complexity(model, input_size)
    for _ in range(12):
        mid = (lo + hi) / 2
        if macs(mid) <= target_macs:
            hi = mid
        else:
            lo = mid
    run(model, hi)
    return count_complexity(model, input_size)


def channels_per_layer(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv2d (name → count), for reports and determinism checks."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
