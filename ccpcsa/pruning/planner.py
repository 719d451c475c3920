"""Step planners: what the pruning loop removes next, and when it stops.

Algorithm 1 (:mod:`ccpcsa.pruning.loop`) scores channels, asks a planner for the next cut, fine-tunes and guards the
accuracy. A planner holds one way of choosing a step — the split Torch-Pruning makes between importance and pruner and
Polygraphy between runner and comparator:

- :class:`MacsPlanner` — each iteration removes ``prune.steps.flops_reduction`` of the original MACs (or
  ``groups_per_iteration`` blocks) in the allocation's block order, until the MACs/params target;
- :class:`LatencyPlanner` — each iteration removes blocks until the latency table of the target (timed here or read
  from a target profile) estimates that iteration's speedup step, corrected by what earlier steps delivered
  (:class:`StepGain`); it stops when the *timed* (or, for a profile, the calibrated) speedup reaches
  ``prune.target.speedup`` / ``prune.target.latency_ms``;
- :class:`ReferencePlanner` — Torch-Pruning's ``MetaPruner`` picks and cuts to each MACs step (the benchmark's external
  reference, ``prune.steps.pruner: torch-pruning``).

A planner never scores (the criterion does) and never trains (the loop does); it cuts through the pruner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from ..models.complexity import Complexity
from ..surgery.cost import CostModel, LatencyCost, MacsCost
from ..surgery.macs_target import fewest_prefix, prune_to_target
from ..surgery.prune import ChannelPruner, channels_per_layer, metapruner_to_target
from .allocation import NEEDS_LATENCY, order_blocks
from .settings import PruneConfig
from .steering import StepGain

Plan = dict[str, list[int]]
#: the per-block loss increase for the allocations that price it (None for the others): ``(pruner, scores) → …``
Sensitivity = Callable[[ChannelPruner, dict[str, Any]], "dict[str, list[float]] | None"]
#: the criterion's weight compensation, run on the chosen plan just before the surgery (or None)
Compensation = Callable[[Plan], None] | None


class LatencyProbe(Protocol):
    """What a latency planner needs from the target runtime (``export.layer_latency.RuntimeLatencyProbe``,
    ``export.target_profile.ProfileLatencyProbe``): the unpruned model as the reference, the reference's and a model's
    latency timed interleaved (ms per batch, the deployed graph), and the latency cost model of a pruner calibrated
    to a timed latency."""

    def set_reference(self, model: nn.Module) -> float:
        """Keep ``model`` (the unpruned one) as the reference; return its latency in ms."""
        ...

    def measure_pair(self, model: nn.Module | None) -> tuple[float, float]:
        """``(reference ms, model ms)`` timed interleaved (``None``: the reference against itself)."""
        ...

    def cost_model(self, pruner: ChannelPruner, actual_ms: float) -> LatencyCost:
        """The latency cost model of ``pruner``'s model, calibrated so its current cost is ``actual_ms``."""
        ...


class StepPlanner(Protocol):
    """One way of choosing the loop's steps."""

    def reached(self, current: Complexity) -> bool:
        """Whether the target is reached by the model as it is (``current``: its deployed complexity)."""
        ...

    def cut(self, it: int, model: nn.Module, pruner: ChannelPruner, scores: dict[str, np.ndarray], current: Complexity,
            compensation: Compensation) -> tuple[Plan, dict[str, float]]:
        """Choose iteration ``it``'s blocks from ``scores`` and remove them from ``model`` in place; return the applied
        plan (layer → removed channel indices) and the planner's estimate for the history row."""
        ...

    def observe(self, model: nn.Module, estimate: dict[str, float]) -> dict[str, Any]:
        """After the fine-tune: what the planner measures of the step (history row fields; empty for MACs)."""
        ...

    def accepted(self, row: dict[str, Any]) -> None:
        """The guard kept the step whose history row is ``row``."""
        ...

    def progress(self, row: dict[str, Any]) -> str:
        """A fragment for the iteration's progress line ('' when there is nothing to add)."""
        ...


class MacsPlanner:
    """MACs/params target: iteration ``it`` prunes to ``max(target, base·(1 − step·it))`` MACs (below the current
    model by at least one MAC), or ``groups_per_iteration`` blocks, in the allocation's order; priced in the target's
    milliseconds for the latency-priced allocations (:data:`NEEDS_LATENCY`), in MACs for ``cost`` /
    ``sensitivity-macs``. Stops at ``MACs ≤ target·1.0005`` and ``params ≤ target_params``."""

    def __init__(self, cfg: PruneConfig, base: Complexity, latency: LatencyProbe | None, sensitivity: Sensitivity) -> None:
        self.cfg, self.base, self.latency, self.sensitivity = cfg, base, latency, sensitivity
        self.target_macs = base.macs * (1 - cfg.target.flops_reduction)
        self.target_params = base.params * (1 - cfg.target.params_reduction) if cfg.target.params_reduction is not None else None

    def reached(self, current: Complexity) -> bool:  # noqa: D102 — StepPlanner
        return current.macs <= self.target_macs * 1.0005 and (self.target_params is None or current.params <= self.target_params)

    def step_goal(self, it: int) -> float:
        """Iteration ``it``'s MACs goal: ``max(target, base·(1 − step·it), 0)``."""
        return max(self.target_macs, self.base.macs * (1 - self.cfg.steps.flops_reduction * it), 0)

    def cut(self, it: int, model: nn.Module, pruner: ChannelPruner, scores: dict[str, np.ndarray], current: Complexity,
            compensation: Compensation) -> tuple[Plan, dict[str, float]]:  # noqa: D102 — StepPlanner
        cfg = self.cfg
        if cfg.steps.allocation in NEEDS_LATENCY:  # priced in milliseconds of the target runtime, stopped at the MACs target
            assert self.latency is not None
            cost: CostModel | None = self.latency.cost_model(pruner, self.latency.measure_pair(model)[1])
        else:
            cost = MacsCost(pruner) if cfg.steps.allocation in ("cost", "sensitivity-macs") else None
        order = order_blocks(pruner, scores, cfg.steps.allocation, cost, self.sensitivity(pruner, scores))
        if cfg.steps.groups_per_iteration is not None:
            plan, _ = prune_to_target(pruner, scores, blocks=cfg.steps.groups_per_iteration, ranked=order, before_apply=compensation)
        else:
            plan, _ = prune_to_target(pruner, scores, target_macs=min(self.step_goal(it), current.macs - 1), ranked=order,
                                      exclude_attention=cfg.recovery.remove_attention, before_apply=compensation)
        return plan, {}

    def observe(self, model: nn.Module, estimate: dict[str, float]) -> dict[str, Any]:  # noqa: D102 — StepPlanner
        return {}

    def accepted(self, row: dict[str, Any]) -> None:  # noqa: D102 — StepPlanner
        pass

    def progress(self, row: dict[str, Any]) -> str:  # noqa: D102 — StepPlanner
        return ""


class ReferencePlanner(MacsPlanner):
    """The external reference: Torch-Pruning's ``MetaPruner`` (its magnitude importance) picks and cuts to each MACs
    step of :class:`MacsPlanner`, in the loop's alignment; the criterion's scores are not used."""

    def cut(self, it: int, model: nn.Module, pruner: ChannelPruner, scores: dict[str, np.ndarray], current: Complexity,
            compensation: Compensation) -> tuple[Plan, dict[str, float]]:  # noqa: D102 — StepPlanner
        before = channels_per_layer(model)
        metapruner_to_target(model, pruner.input_size, min(self.step_goal(it), current.macs - 1), round_to=pruner.round_to,
                             max_layer_ratio=self.cfg.widths.max_layer_ratio, exclude_attention=self.cfg.recovery.remove_attention)
        after = channels_per_layer(model)
        return {k: list(range(before[k] - after.get(k, 0))) for k in before if before[k] != after.get(k, 0)}, {}


class LatencyPlanner(MacsPlanner):
    """Latency target on ``latency``'s runtime: iteration ``it`` aims at speedup ``min(target, 1/(1 − step·it))``; the
    fewest first blocks of the allocation's order whose table estimate reaches ``StepGain.aim`` of that goal are cut
    (at least one). The loop stops when the speedup timed after an accepted step reaches the target. The estimate
    with every layer at its floor is recorded once (``floor_speedup_estimate``) and a target above it is warned about."""

    def __init__(self, cfg: PruneConfig, base: Complexity, latency: LatencyProbe, sensitivity: Sensitivity,
                 target_speedup: float, record: dict[str, Any], alignment: int) -> None:
        super().__init__(cfg, base, latency, sensitivity)
        self.probe, self.target_speedup, self.record, self.alignment = latency, target_speedup, record, alignment
        self.speedup_now, self.steer = 1.0, StepGain()
        self.start: tuple[float, float] = (1.0, 1.0)

    def reached(self, current: Complexity) -> bool:  # noqa: D102 — StepPlanner
        return self.speedup_now >= self.target_speedup

    def cut(self, it: int, model: nn.Module, pruner: ChannelPruner, scores: dict[str, np.ndarray], current: Complexity,
            compensation: Compensation) -> tuple[Plan, dict[str, float]]:  # noqa: D102 — StepPlanner
        cfg = self.cfg
        ref_ms, cur_ms = self.probe.measure_pair(model)
        lat_cost = self.probe.cost_model(pruner, cur_ms)
        order = order_blocks(pruner, scores, cfg.steps.allocation, lat_cost, self.sensitivity(pruner, scores))
        goal_ms = ref_ms / min(self.target_speedup, 1 / max(1e-6, 1 - cfg.steps.flops_reduction * it))
        self.start, aim_ms = (ref_ms, cur_ms), self.steer.aim(cur_ms, goal_ms)
        prefix = lat_cost.prefix_costs(order)
        if "floor_speedup_estimate" not in self.record:  # what the table says the floors allow, said once
            self._floor(ref_ms / max(lat_cost.proportional().prefix_costs(order)[-1], 1e-9))
        k = fewest_prefix(len(order), prefix.__getitem__, aim_ms, prefix)
        k = max(k, 1) if order else 0  # already past this step's goal (an earlier step overshot): take a step anyway
        if cfg.steps.groups_per_iteration is not None:
            k = min(cfg.steps.groups_per_iteration, len(order))
        estimate = {"estimated_ms": prefix[k], "goal_ms": goal_ms, "aim_ms": aim_ms, "gain": self.steer.gain}
        plan, _ = prune_to_target(pruner, scores, blocks=k, ranked=order, before_apply=compensation)
        return plan, estimate

    def _floor(self, floor: float) -> None:
        """Record the floor estimate; warn when the target is above it."""
        self.record["floor_speedup_estimate"] = floor
        if floor < self.target_speedup:
            tqdm.write(f"warning: prune.target.speedup {self.target_speedup:.2f}x at batch {self.cfg.target.latency_batch} is likely "
                       f"out of reach: with every layer at its floor (alignment {self.alignment}, prune.widths.min_channels, "
                       f"prune.widths.max_layer_ratio) the latency table estimates {floor:.2f}x; lower the target, "
                       "prune.widths.round_to or the floors")

    def observe(self, model: nn.Module, estimate: dict[str, float]) -> dict[str, Any]:  # noqa: D102 — StepPlanner
        ref_ms, cur_ms = self.probe.measure_pair(model)
        self.steer.record(self.start, estimate["estimated_ms"], (ref_ms, cur_ms))
        return {**estimate, "latency_ms": cur_ms, "unpruned_ms": ref_ms, "speedup": ref_ms / cur_ms}

    def accepted(self, row: dict[str, Any]) -> None:  # noqa: D102 — StepPlanner
        self.speedup_now = float(row["speedup"])

    def progress(self, row: dict[str, Any]) -> str:  # noqa: D102 — StepPlanner
        return f" speedup {row['speedup']:.2f}x (goal {self.target_speedup:.2f}x)"


def make_planner(cfg: PruneConfig, base: Complexity, latency: LatencyProbe | None, reference_ms: float | None,
                 sensitivity: Sensitivity, record: dict[str, Any], alignment: int) -> StepPlanner:
    """The planner ``cfg`` asks for: a latency target (``target_speedup``, or ``target_latency_ms`` as
    ``reference_ms / target_latency_ms``) → :class:`LatencyPlanner`; ``pruner: torch-pruning`` →
    :class:`ReferencePlanner`; else :class:`MacsPlanner`. ``record``: the result's latency record (the target speedup
    and the floor estimate go there). Raises :class:`UserError` when a latency target or a latency-priced allocation
    has no probe, or a latency target is not below the unpruned model's latency."""
    lat_mode = cfg.target.speedup is not None or cfg.target.latency_ms is not None
    if (lat_mode or cfg.steps.allocation in NEEDS_LATENCY) and latency is None:
        raise UserError(f"prune.target.speedup / prune.target.latency_ms / prune.steps.allocation=latency need a latency "
                        f"measurement on {cfg.target.runtime}, which this run cannot make; use prune.target.flops_reduction "
                        "with another allocation")
    if not lat_mode:
        return ReferencePlanner(cfg, base, latency, sensitivity) if cfg.steps.pruner == "torch-pruning" else MacsPlanner(cfg, base, latency, sensitivity)
    assert latency is not None and reference_ms is not None
    target = cfg.target.speedup
    if target is None:
        target = reference_ms / float(cfg.target.latency_ms)  # type: ignore[arg-type]
        if target <= 1:
            raise UserError(f"prune.target.latency_ms {cfg.target.latency_ms} ms is not below the unpruned model's "
                            f"{reference_ms:.3f} ms at batch {cfg.target.latency_batch}; nothing to prune")
    record["target_speedup"] = target
    return LatencyPlanner(cfg, base, latency, sensitivity, float(target), record, alignment)
