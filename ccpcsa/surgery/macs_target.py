"""Pruning to a MACs target: the fewest blocks of an order that reach it, by real trial surgeries.

:func:`prune_to_target` removes a number of blocks or reaches ``target_macs``; :func:`fit_to_target` picks those
blocks, guided by the first-order estimate of :class:`~ccpcsa.surgery.cost.MacsCost` and checked with the real counter
on trial copies (:func:`~ccpcsa.surgery.prune.macs_after`); :func:`fewest_prefix` is its search. They sit above
:mod:`ccpcsa.surgery.prune` (the surgery) and :mod:`ccpcsa.surgery.cost` (the estimate), which both read the pruner's
groups: ``prune`` ← ``cost`` ← ``macs_target``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..models.complexity import Complexity, count_complexity
from .cost import MacsCost
from .prune import Block, ChannelPruner, deployed_complexity, macs_after, plan_from_blocks


def fewest_prefix(n_max: int, value: Callable[[int], float], target: float, estimate: Sequence[float] | None = None) -> int:
    """Smallest ``k`` in ``0..n_max`` with ``value(k) ≤ target`` (``n_max`` if none), for a ``value`` that does not
    increase with ``k``: bisection, where the first 4 probes invert ``estimate`` (a cheap non-increasing guess of
    ``value``, rescaled on the last probe) and check the neighbour — few calls of an expensive ``value``."""
    cache: dict[int, float] = {}

    def f(n: int) -> float:
        if n not in cache:
            cache[n] = float(value(n))
        return cache[n]

    if n_max == 0 or f(0) <= target:
        return 0
    lo, hi = 0, n_max  # f(lo) > target; the answer lies in (lo, hi]
    base = f(0)
    saved = None if estimate is None else base - np.asarray(estimate, dtype=np.float64)  # non-decreasing
    c, rounds = 1.0, 0
    while hi - lo > 1:
        if saved is not None and rounds < 4:
            g = int(np.searchsorted(saved, (base - target) / c, side="left"))
            g = min(hi - 1, max(lo + 1, g))
        else:
            g = (lo + hi) // 2
        rounds += 1
        fg = f(g)
        if saved is not None and saved[g] > 0 and base > fg:
            c = (base - fg) / saved[g]
        if fg <= target:
            hi = g
            if g - 1 > lo and f(g - 1) > target:
                lo = g - 1
        else:
            lo = g
            if g + 1 < hi and f(g + 1) <= target:
                hi = g + 1
    return hi


def prune_to_target(pruner: ChannelPruner, scores: dict[str, np.ndarray], *, blocks: int | None = None,
                    target_macs: float | None = None, ranked: Sequence[Block] | None = None,
                    before_apply: Callable[[dict[str, list[int]]], None] | None = None,
                    exclude_attention: bool = False) -> tuple[dict[str, list[int]], Complexity]:
    """Prune ``pruner.model`` in place: the first ``blocks`` blocks of ``ranked`` (default: the global order
    :meth:`ChannelPruner.ranked_blocks`), or the blocks that bring MACs down to ``target_macs`` (counted without BAM
    when ``exclude_attention``) — :func:`fit_to_target`. ``before_apply(plan)`` runs on the chosen plan just before the
    surgery (e.g. weight compensation while channel indices are still valid). Returns the applied plan and the new
    complexity (of the model as it is, BAM included)."""
    if blocks is None and target_macs is None:
        raise ValueError("give blocks or target_macs")
    order = list(ranked) if ranked is not None else pruner.ranked_blocks(scores)
    if blocks is not None:
        chosen = order[:min(blocks, len(order))]
    else:
        chosen = fit_to_target(pruner, order, float(target_macs), exclude_attention)  # type: ignore[arg-type]
    plan = plan_from_blocks(chosen)
    if before_apply is not None:
        before_apply(plan)
    pruner.apply(plan)
    return plan, count_complexity(pruner.model, pruner.input_size)


def fit_to_target(pruner: ChannelPruner, order: list[Block], target_macs: float, exclude_attention: bool = False,
                  attempts: int = 4, slack: float = 0.01) -> list[Block]:
    """The blocks to remove for ``target_macs``: the fewest first blocks of ``order`` that reach it (real trial surgeries
    guided by the first-order MACs estimate of :mod:`ccpcsa.surgery.cost`, :func:`fewest_prefix`). When that prefix overshoots
    by more than ``slack`` of the MACs (its last block was a coarse one — half a narrow residual stream, say), the last
    block and its group's later blocks are set aside and the prefix is searched again, up to ``attempts`` times; the
    plan that reaches the target with the least overshoot wins. So criteria compared at one MACs target reach it alike,
    not one coarse block apart; every plan is still a prefix of every group's own block order."""
    cost = MacsCost(pruner)
    base = deployed_complexity(pruner.model, pruner.input_size, exclude_attention).macs
    seen: dict[tuple[int, ...], float] = {}

    def real(blocks: list[Block]) -> float:
        key = tuple(id(b) for b in blocks)
        if key not in seen:
            seen[key] = base if not blocks else macs_after(pruner, plan_from_blocks(blocks), exclude_attention)
        return seen[key]

    cur, best, best_macs = list(order), [], -np.inf
    for _ in range(max(1, attempts)):
        est = cost.prefix_costs(cur)
        est = [base - (est[0] - e) for e in est]
        k = fewest_prefix(len(cur), lambda n, c=cur: real(c[:n]), target_macs, est)
        macs = real(cur[:k])
        if macs <= target_macs and macs > best_macs:
            best, best_macs = cur[:k], macs
        if k == 0 or macs > target_macs or target_macs - macs <= slack * base:
            break
        last = cur[k - 1]
        cur = cur[:k - 1] + [b for b in cur[k:] if b.key != last.key]
    return best if best_macs > -np.inf else cur[:k]
