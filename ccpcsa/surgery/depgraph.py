"""torch-pruning dependency-graph helpers for :class:`ccpcsa.surgery.prune.ChannelPruner`: reshapes it cannot map, one index
mapping per graph, and one surgery for many groups.

- **Reshapes.** torch-pruning follows channels through a ``view``/``reshape`` only when it is a flatten (``(N, C, H, W)
  → (N, C·H·W)``), its inverse, or keeps dim 1 as it is; a permutation *across* channels, e.g. ShuffleNet's channel
  shuffle (``view(N, G, C/G, H, W) → transpose(1, 2) → view(N, C, H, W)``), maps channel k of its input to another
  channel of its output, which torch-pruning's index mapping does not describe (it either fails while building the
  graph or maps k to k). :func:`tolerant_reshape_mapping` keeps such a failure from aborting the trace and
  :func:`reshape_keeps_channels` tells the reshapes whose channels are followed correctly: a group that passes through
  any other is left whole by the pruner.
- **Index mapping once.** ``DependencyGraph.get_pruning_group`` recomputes every concat/split/reshape index mapping of
  the whole graph on every call; on a graph that is not being pruned meanwhile that is the same result each time, and
  quadratic in the number of concats (DenseNet-121: 120 groups × 62 concats, 5 s per graph, 86 % of it in that
  recomputation). :func:`frozen_index_mapping` skips it while the graph is only read.
- **One surgery.** :func:`prune_groups_together` computes every group on the unpruned graph (so every index refers to
  the same traced layout, concat offsets included) and then prunes every module once with the union of its indices —
  instead of one fresh trace per group, which DenseNet-121 would need ~100 times per surgery.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch_pruning as tp
from torch import nn

_index_mapping = tp.dependency.index_mapping

#: torch-pruning's placeholder nodes for tensor operations (no weights to prune; rebuilt with every trace)
_OP_NODES = (tp.ops._ConcatOp, tp.ops._SplitOp, tp.ops._UnbindOp, tp.ops._ReshapeOp, tp.ops._SliceOp, tp.ops._OutputOp,
             tp.ops._ElementWiseOp, tp.ops._ExpandOp, tp.ops._CustomizedOp)


@contextmanager
def tolerant_reshape_mapping(failed: list[nn.Module]) -> Iterator[None]:
    """While active, an exception in torch-pruning's reshape index mapping leaves that reshape unmapped and appends
    its op node to ``failed`` instead of aborting ``build_dependency`` (groups through it must then be left whole)."""
    original = _index_mapping.update_reshape_index_mapping

    def tolerant(graph: Any, node: Any) -> None:
        try:
            original(graph, node)
        except Exception:  # torch-pruning cannot express this reshape's channel mapping
            failed.append(node.module)

    _index_mapping.update_reshape_index_mapping = tolerant
    try:
        yield
    finally:
        _index_mapping.update_reshape_index_mapping = original


@contextmanager
def frozen_index_mapping() -> Iterator[None]:
    """While active, torch-pruning does not recompute index mappings (``get_pruning_group`` does on every call). Only for
    a graph whose mappings are current (built, not pruned since) and that is not pruned inside the block."""
    original = _index_mapping.update_index_mapping
    _index_mapping.update_index_mapping = lambda graph: None
    try:
        yield
    finally:
        _index_mapping.update_index_mapping = original


def reshape_shapes(dg: tp.DependencyGraph, op: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(input shape, output shape) of the traced ``view``/``reshape`` behind op node ``op``; None when autograd did not
    record them."""
    node = dg.module2node.get(op)
    grad_fn = getattr(node, "grad_fn", None)
    try:
        before = tuple(int(s) for s in grad_fn._saved_self_sym_sizes)  # type: ignore[union-attr]
        after = tuple(int(s) for s in grad_fn._input_metadata[0].shape)  # type: ignore[union-attr]
    except (AttributeError, IndexError, TypeError, RuntimeError):
        return None
    return before, after


def reshape_keeps_channels(before: Sequence[int], after: Sequence[int]) -> bool:
    """True when a reshape from ``before`` to ``after`` maps channels in a way torch-pruning describes: dims 0 and 1
    unchanged (``(N, C, H, W) → (N, C, H·W)``), a flatten ``(N, C, …) → (N, C·…)`` or its inverse, or rows of a
    channels-last tensor merged or split with the last dim unchanged (``(N, H, W, C) → (N·H·W, C)``, as ``F.linear``
    does for a Linear over channels)."""
    if [d for d in before if d != 1] == [d for d in after if d != 1]:
        return True  # only size-1 dims added or removed (a per-channel parameter shaped (C,) → (1, C, 1, 1))
    if len(before) < 2 or len(after) < 2:
        return False
    if before[-1] == after[-1] and 2 in (len(before), len(after)):
        return True  # channels-last rows
    if before[0] != after[0]:
        return False
    if before[1] == after[1]:
        return True
    if len(after) == 2 and after[1] == math.prod(before[1:]):
        return True  # flatten: channel c → features c·S … (c+1)·S − 1
    return len(before) == 2 and before[1] == math.prod(after[1:])  # unflatten


def cross_channel_reshapes(dg: tp.DependencyGraph, failed: Sequence[nn.Module]) -> dict[nn.Module, str]:
    """The reshape op nodes of ``dg`` whose channel mapping torch-pruning cannot describe — those in ``failed``
    (:func:`tolerant_reshape_mapping`) and those :func:`reshape_keeps_channels` rejects — each with its shapes
    (``"[N, C, H, W] → [N, G, C/G, H, W]"``, "" when unknown). Their index mappings are reset to identity, so following
    a group through them stays cheap (a wrong flatten stride multiplies the indices at every shuffle); every group
    that passes through one must be left whole."""
    bad: dict[nn.Module, str] = {}
    for op in dg.module2node:
        if not isinstance(op, tp.ops._ReshapeOp):
            continue
        shapes = reshape_shapes(dg, op)
        if op in failed or (shapes is not None and not reshape_keeps_channels(*shapes)):
            bad[op] = f"{list(shapes[0])} → {list(shapes[1])}" if shapes else ""
    for op in bad:
        node = dg.module2node[op]
        for dep in list(node.dependencies) + [d for n in node.inputs + node.outputs for d in n.dependencies
                                              if d.target is node]:
            dep.index_mapping[0] = None
    return bad


def downstream_op(dg: tp.DependencyGraph, root: nn.Module, ops: Container[nn.Module]) -> nn.Module | None:
    """The first of ``ops`` that ``root``'s output reaches before it enters another conv or linear layer (following
    the traced graph forward through norms, activations, adds, concats, splits and reshapes); None if none."""
    stack, seen = list(dg.module2node[root].outputs), set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.module in ops:
            return node.module  # type: ignore[no-any-return]
        if not isinstance(node.module, (nn.Conv2d, nn.Linear)):
            stack.extend(node.outputs)
    return None


def prune_groups_together(dg: tp.DependencyGraph, groups: Sequence[tp.Group]) -> None:
    """Prune ``groups`` — all computed on ``dg`` as traced, none pruned yet — in one pass: every module (or unwrapped
    parameter) is pruned once per pruning function with the union of the indices its groups give it. The graph is stale
    afterwards: trace it again before computing new groups."""
    merged: dict[tuple[int, Any], tuple[Any, Any, set[int]]] = {}
    for group in groups:
        for item in group:
            dep = item.dep
            target = dep.target.module
            if isinstance(target, _OP_NODES):
                continue
            entry = merged.setdefault((id(target), dep.handler), (dep.target, dep.handler, set()))
            entry[2].update(int(i) for i in item.idxs)
    for node, handler, idxs in merged.values():
        target, remove = node.module, sorted(idxs)
        if node.type == tp.ops.OPTYPE.PARAMETER:  # an nn.Parameter outside a known layer (e.g. a layer scale): replace it
            name = dg._param_to_name[target]
            owner: nn.Module = dg.model
            *path, attr = name.split(".")
            for part in path:
                owner = getattr(owner, part)
            setattr(owner, attr, handler(target, remove))
        else:
            handler(target, remove)


def iter_groups(dg: tp.DependencyGraph, ignored_layers: Sequence[nn.Module],
                root_module_types: tuple[type, ...]) -> Iterator[tuple[nn.Module, tp.Group | None, str]]:
    """torch-pruning's ``get_all_groups`` (one group per set of coupled channels, rooted at its first conv/linear in
    trace order, all channels), yielding ``(root, group, "")`` — except that a root whose group torch-pruning fails to
    compute (an index mapping it got wrong, e.g. around a channel shuffle) is yielded as ``(root, None, reason)``
    instead of aborting the enumeration. Run it under :func:`frozen_index_mapping`."""
    visited: set[int] = set()
    ignored = {id(m) for m in list(ignored_layers) + list(dg.IGNORED_LAYERS_IN_TRACING)}
    for m in list(dg.module2node):
        if id(m) in ignored or id(m) in visited or not isinstance(m, root_module_types):
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        try:
            group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except Exception as exc:  # torch-pruning's own failure on this part of the graph
            text = str(exc).strip().splitlines()
            yield m, None, f"torch-pruning cannot follow its channels ({type(exc).__name__}: {text[0][:120] if text else ''})"
            continue
        prunable = True
        for item in group:
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                visited.add(id(item.dep.target.module))
                prunable = prunable and id(item.dep.target.module) not in ignored
        if prunable:
            yield m, group, ""


class ModuleTrace:
    """Which modules a forward pass entered and left (forward hooks): ``running`` is the stack of modules still
    executing — after an exception, its last entry is the innermost module that raised — and ``executed`` the names of
    the modules that completed, in the order they completed."""

    def __init__(self, model: nn.Module) -> None:
        self.running: list[str] = []
        self.executed: dict[str, None] = {}  # ordered set
        self._handles = []
        for name, module in model.named_modules():
            if name:
                self._handles.append(module.register_forward_pre_hook(self._enter(name)))
                self._handles.append(module.register_forward_hook(self._leave(name)))

    def _enter(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self.running.append(name)
        return hook

    def _leave(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.running and self.running[-1] == name:
                self.running.pop()
            self.executed.setdefault(name)
        return hook

    def __enter__(self) -> ModuleTrace:
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
