"""Which residual blocks to remove whole, chosen jointly with the widths (``prune.depth.drop_blocks: auto``).

Removing a block and narrowing layers both buy speed; which buys it at less accuracy depends on the model and on the
widths the target CPU runs well (its channel block: 8 on AVX2, 16 with AVX-512, :mod:`ccpcsa.surgery.alignment`). On
resnet20 in 16-blocks two whole blocks beat deeper channel cuts at equal MACs after fine-tuning (bench/README.md
"Depth"); a hand-written ``depth.drop_blocks`` per CPU kind is what this module replaces. Measurements on the model
the loop starts from, no training:

1. **Price every block.** Each candidate (:func:`ccpcsa.models.depth.candidate_blocks`) is removed alone, BatchNorm
   re-estimated on the recovery's calibration images, and the val accuracy measured: its cost is the drop in pp per
   percent of MACs it removes (residual networks lose little to one missing block, Veit, Wilber, Belongie, NeurIPS
   2016), or with ``depth.price: time`` per percent of the target's time it removes (:func:`time_shares`: blocks of
   equal MACs do not take equal time — a 16-wide INT8 block at full resolution takes more than a 32-wide one at half,
   bench/README.md "Depth priced by time"). Blocks are tried cheapest first.
2. **Price each depth at the run's goal.** A set of the cheapest blocks removed (the two families below), then
   channels cut one-shot (magnitude-ranked, in the run's alignment, scope and floors) until the loop's own target —
   the MACs target, or the latency table's estimate of the speed target on the target runtime — BatchNorm
   re-estimated, val accuracy measured. A depth that cannot reach the goal (floors) does not compete.

   Two families of depths are priced: the ``k`` cheapest blocks overall (``k = 0 … depth.max_blocks``; the scan stops
   after :data:`PATIENCE` depths without a new best by :data:`TIE_PP`), and the ``k`` cheapest blocks *of every stage*
   (blocks of one input shape; ``k = 1, 2, …`` until the blocks alone reach the goal). The second family finds the
   deep, even removals a network of many small blocks wants, where one more block in the overall order moves the
   one-shot score by less than :data:`TIE_PP` (resnet56: bench/README.md "The speed floor").
3. **Time the best (``depth.min_speedup``, optional).** The MACs a depth removes do not say how fast the runtime runs
   it: a removed block takes its adds and reorders with it, while a narrowed INT8 conv keeps a fixed cost
   (bench/README.md "resnet56: blocks instead of channels"). With a floor, the probes are timed end to end in FP32 and
   INT8 at the export's batch sizes on the target (:mod:`export.speed_check`), most accurate first, and a probe not
   faster than the floor by one standard error of its paired timing does not compete.

The depth kept is the most accurate probe that reaches the goal (and the floor); a probe with fewer blocks within
:data:`TIE_PP` of it is kept instead (one-shot accuracies favour depth — a block removal loses less before fine-tuning
than the channel cut it replaces — so a tie goes to fewer blocks). When no timed probe reaches the floor, the fastest
is kept and the summary says so.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..criteria import ScoreContext, get_criterion
from ..models.depth import block_stages, candidate_blocks, drop_blocks
from ..surgery.macs_target import fewest_prefix, prune_to_target
from ..surgery.prune import ChannelPruner, deployed_complexity
from ..training.engine import recalibrate_batchnorm

#: pp a deeper choice must gain over the best shallower one: about one SE of a 2,000-image val accuracy near 65 %,
#: where resnet20's one-shot probes sit (paired on one sample, the real noise is less). On a model of many small blocks
#: one more block gains less than this, and the search stops early (resnet56: bench/README.md "Depth chosen by
#: measurement")
TIE_PP = 1.0
#: depths tried past the best before the search stops
PATIENCE = 2
#: a depth "reaches" the goal when its cut lands within this fraction of the goal (the MACs search's own slack)
REACH_SLACK = 0.01
#: what a block's accuracy drop is divided by (``prune.depth.price``): the MACs it removes, or the target's time
PRICES = ("macs", "time")
#: paired rounds of each stage's timing in :func:`time_shares`: these timings order every block (a probe's timing is
#: one of several), and at the timer's own count two stages' shares moved between repeats by more than the price gaps
#: they decide (bench/README.md "Depth priced by time")
SHARE_ROUNDS = 21

Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


class SpeedCheck(Protocol):
    """The target's timer (``prune.depth.price: time``, ``prune.depth.min_speedup``): end-to-end speedups of a probe
    over the unpruned model on the target (:mod:`export.speed_check`); ``floor`` is ``min_speedup`` (None: none)."""

    floor: float | None

    def set_reference(self, model: nn.Module) -> None:
        """Time against ``model`` (the unpruned one, as the loop got it) from now on."""
        ...

    def speedups(self, model: nn.Module, rounds: int | None = None) -> dict[str, tuple[float, float]]:
        """``{"<precision> b<batch>": (unpruned ms / model ms, its standard error)}`` for every precision and batch
        size timed, over ``rounds`` paired rounds (None: the timer's own count)."""
        ...


class CutGoal(Protocol):
    """Where the probe's one-shot channel cut stops: the loop's target in its own measure."""

    def cut(self, pruner: ChannelPruner) -> tuple[float, bool]:
        """Cut ``pruner.model`` in place toward the goal; ``(the measure after the cut, whether it reached the goal)``."""
        ...


@dataclass
class MacsGoal:
    """Cut to ``target_macs`` MACs of the deployed graph (without BAM when ``exclude_attention``)."""

    target_macs: float
    exclude_attention: bool

    def cut(self, pruner: ChannelPruner) -> tuple[float, bool]:
        """Magnitude-ranked blocks until the MACs target (:func:`prune_to_target`); ``(MACs, reached)``."""
        prune_to_target(pruner, _magnitude(pruner), target_macs=self.target_macs, exclude_attention=self.exclude_attention)
        macs = deployed_complexity(pruner.model, pruner.input_size, self.exclude_attention).macs
        return float(macs), macs <= self.target_macs * (1 + REACH_SLACK)


@dataclass
class LatencyGoal:
    """Cut until the latency table of ``probe`` (:class:`ccpcsa.pruning.planner.LatencyProbe`) estimates ``goal_ms``."""

    probe: Any
    goal_ms: float

    def cut(self, pruner: ChannelPruner) -> tuple[float, bool]:
        """The fewest magnitude-ranked blocks whose table estimate (calibrated on the timed model) reaches the goal;
        ``(estimated ms, reached)``."""
        cost = self.probe.cost_model(pruner, self.probe.measure_pair(pruner.model)[1])
        order = pruner.ranked_blocks(_magnitude(pruner))
        prefix = cost.prefix_costs(order)
        k = fewest_prefix(len(order), prefix.__getitem__, self.goal_ms, prefix)
        prune_to_target(pruner, {}, blocks=k, ranked=order)
        return float(prefix[k]), prefix[k] <= self.goal_ms * (1 + REACH_SLACK)


def _magnitude(pruner: ChannelPruner) -> dict[str, Any]:
    """The l1 criterion's channel scores of ``pruner.model``: the probe's cut needs no statistics epoch."""
    return get_criterion("l1").score(ScoreContext(pruner.model, pruner))


@dataclass
class DepthChoice:
    """The blocks chosen and the measurements behind them (JSON-ready through :meth:`summary`)."""

    blocks: list[str]
    reference_val: float
    single: list[dict[str, Any]] = field(default_factory=list)
    depths: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    min_speedup: float | None = None
    floor_met: bool | None = None
    price: str = "macs"
    stage_times: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """``blocks``, the unpruned val accuracy, each block's price and what priced it (``price``; ``stage_times``:
        the timings behind ``time``), each depth's probe (``family`` ``overall`` or ``per-stage``; ``speedups`` where it
        was timed), the floor and whether the choice met it, and the seconds."""
        return {"blocks": self.blocks, "reference_val_accuracy": self.reference_val, "price": self.price,
                "stage_times": self.stage_times, "single": self.single, "depths": self.depths, "seconds": self.seconds,
                "tie_pp": TIE_PP, "min_speedup": self.min_speedup, "floor_met": self.floor_met}


def without_blocks(model: nn.Module, names: list[str], recalibrate: Batches | None, input_size: int = 32) -> nn.Module:
    """A copy of ``model`` with the blocks ``names`` removed (:func:`drop_blocks`) and, when any went and
    ``recalibrate`` is given, BatchNorm re-estimated on its batches; ``model`` is left unchanged."""
    trial = copy.deepcopy(model)
    if names:
        drop_blocks(trial, names, input_size)
        if recalibrate is not None:
            recalibrate_batchnorm(trial, recalibrate)
    return trial


def price_blocks(model: nn.Module, accuracy: Callable[[nn.Module], float], recalibrate: Batches | None, *,
                 input_size: int = 32, exclude_attention: bool = False, reference: float | None = None,
                 names: list[str] | None = None, step: Callable[[], object] | None = None) -> list[dict[str, Any]]:
    """One row per candidate block (``names``, default :func:`candidate_blocks`), each removed alone
    (:func:`without_blocks`): ``macs_share`` = 1 − MACs without it / MACs with it (deployed graph), ``val_accuracy``,
    ``drop_pp`` = ``reference`` (default ``accuracy(model)``) − that, and ``pp_per_macs_pct`` = drop / (100 ·
    share), the price the search sorts by. ``step()`` is called after each block (a progress bar)."""
    ref = accuracy(model) if reference is None else reference
    base_macs = deployed_complexity(model, input_size, exclude_attention).macs
    rows = []
    for name in candidate_blocks(model, input_size) if names is None else names:
        trial = without_blocks(model, [name], recalibrate, input_size)
        share = 1 - deployed_complexity(trial, input_size, exclude_attention).macs / base_macs
        acc = accuracy(trial)
        rows.append({"block": name, "macs_share": share, "val_accuracy": acc, "drop_pp": ref - acc,
                     "pp_per_macs_pct": (ref - acc) / max(100 * share, 1e-9)})
        if step is not None:
            step()
    return rows


def time_shares(model: nn.Module, rows: list[dict[str, Any]], speed: SpeedCheck, stage: dict[str, Any], *,
                input_size: int = 32, step: Callable[[], object] | None = None) -> list[dict[str, Any]]:
    """Price the blocks of ``rows`` (:func:`price_blocks`, which gain ``time_share`` and ``pp_per_time_pct`` = drop /
    (100 · time share)) by the target's time, ``speed`` set to the unpruned ``model``. The blocks of one ``stage`` (one
    input shape, :func:`block_stages`) run the same convolutions, so they are timed together — one timing per stage, an
    effect as many times larger than one block's over the same timing noise — and share the time they remove equally:
    ``time_share = (1 − 1 / s_min) / n`` for a stage of ``n`` blocks whose removal times at speedups ``s`` (FP32 / INT8,
    each batch size), ``s_min`` the least of them: the target asks every one of them to be fast, so a block is worth the
    time it removes from the format that gains least. Returns one row per stage (``blocks``, ``speedups``,
    ``speedup_se``, ``time_share`` per block)."""
    groups: dict[Any, list[str]] = {}
    for r in rows:
        groups.setdefault(stage.get(r["block"]), []).append(r["block"])
    out, share = [], {}
    for group in groups.values():
        blocks = _apart(group)  # a block inside another goes with it
        timing = speed.speedups(without_blocks(model, blocks, None, input_size), rounds=SHARE_ROUNDS)
        slowest = min(v for v, _ in timing.values())
        per_block = (1 - 1 / slowest) / len(blocks)
        share.update({b: per_block for b in group})
        out.append({"blocks": blocks, "speedups": {k: v for k, (v, _) in timing.items()},
                    "speedup_se": {k: se for k, (_, se) in timing.items()}, "time_share": per_block})
        if step is not None:
            step()
    for r in rows:
        r["time_share"] = share[r["block"]]
        r["pp_per_time_pct"] = r["drop_pp"] / max(100 * share[r["block"]], 1e-9)
    return out


def _apart(order: list[str]) -> list[str]:
    """``order`` without the names inside or around an earlier one (``3`` and ``3.0`` of a ``Sequential`` of
    Sequentials): every prefix is a set :func:`drop_blocks` accepts."""
    kept: list[str] = []
    for n in order:
        if not any(n == k or n.startswith(f"{k}.") or k.startswith(f"{n}.") for k in kept):
            kept.append(n)
    return kept


def per_stage_sets(order: list[str], stage: dict[str, Any]) -> list[list[str]]:
    """``[S_1, S_2, …]``: ``S_k`` holds the ``k`` first blocks of ``order`` (cheapest first) of every stage (all of a
    stage's blocks when it has fewer), in ``order``'s order, up to the set of every block. Empty when the blocks
    form fewer than two stages (the overall order is then the same family)."""
    rank: dict[str, int] = {}
    seen: dict[Any, int] = {}
    for b in order:
        rank[b] = seen.get(stage.get(b), 0)
        seen[stage.get(b)] = rank[b] + 1
    if len(seen) < 2:
        return []
    return [[b for b in order if rank[b] < k] for k in range(1, max(seen.values()) + 1)]


def _preferred(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The most accurate of ``rows``, or the one with the fewest blocks among those within :data:`TIE_PP` of it."""
    top = max(r["val_accuracy"] for r in rows)
    return min((r for r in rows if r["val_accuracy"] >= top - TIE_PP), key=lambda r: (len(r["blocks"]), -r["val_accuracy"]))


def choose_blocks(model: nn.Module, make_pruner: Callable[[nn.Module], ChannelPruner], goal: CutGoal,
                  accuracy: Callable[[nn.Module], float], recalibrate: Batches | None, *, max_blocks: int,
                  input_size: int = 32, exclude_attention: bool = False, progress: bool = True,
                  speed: SpeedCheck | None = None, price: str = "macs") -> DepthChoice:
    """The blocks to remove from ``model`` (left unchanged) before its channels are pruned toward ``goal``: the module
    docstring's measurements. ``make_pruner(copy)`` builds the loop's pruner (alignment, scope, floors) over a
    candidate copy; ``accuracy(copy)`` is its val accuracy in %; ``recalibrate`` yields the BatchNorm re-estimate's
    batches (None: no re-estimate); ``speed``: the target's timer, with the floor as its ``floor`` (None: no timer);
    ``price``: :data:`PRICES` (``time`` needs ``speed``). Returns the choice with every probe's numbers; ``blocks`` is
    empty when channels alone are preferred."""
    if price not in PRICES or (price == "time" and speed is None):
        raise ValueError(f"price must be one of {PRICES} ('time' with a timer), got {price!r}")
    t0 = time.perf_counter()
    ref = accuracy(model)
    base_macs = deployed_complexity(model, input_size, exclude_attention).macs
    if speed is not None:
        speed.set_reference(model)
    floor = speed.floor if speed is not None else None

    names = candidate_blocks(model, input_size)
    stage = block_stages(model, names, input_size)
    timer = speed if price == "time" else None  # the blocks' time shares come from the target's timer
    bar = tqdm(total=len(names) + min(max_blocks, len(names)) + 1 + (len(set(stage.values())) if timer is not None else 0),
               desc="depth search", disable=not progress, dynamic_ncols=True)
    single = price_blocks(model, accuracy, recalibrate, input_size=input_size, exclude_attention=exclude_attention,
                          reference=ref, names=names, step=lambda: bar.update(1))
    stage_times = (time_shares(model, single, timer, stage, input_size=input_size, step=lambda: bar.update(1))
                   if timer is not None else [])
    order = _apart([r["block"] for r in sorted(single, key=lambda r: r[f"pp_per_{price}_pct"])])
    depths: list[dict[str, Any]] = []
    probes: dict[int, nn.Module] = {}  # row index → probe model, kept to be timed (speed floor only)

    def probe(blocks: list[str], family: str) -> dict[str, Any]:
        trial = without_blocks(model, blocks, recalibrate, input_size)
        pruner = make_pruner(trial)
        widths = dict(pruner.widths())
        measure, reached = goal.cut(pruner)
        if recalibrate is not None:
            recalibrate_batchnorm(trial, recalibrate)
        row = {"family": family, "blocks": blocks, "measure": measure, "reached": reached,
               "channels_cut": dict(pruner.widths()) != widths, "val_accuracy": accuracy(trial),
               "flops_reduction": 1 - deployed_complexity(trial, input_size, exclude_attention).macs / base_macs}
        if floor is not None:
            probes[len(depths)] = trial
        depths.append(row)
        bar.update(1)
        bar.set_postfix(k=len(blocks), val=f"{row['val_accuracy']:.2f}")
        return row

    best: dict[str, Any] | None = None
    since_best = 0
    for k in range(min(max_blocks, len(order)) + 1):
        row = probe(order[:k], "overall")
        if row["reached"] and (best is None or row["val_accuracy"] >= best["val_accuracy"] + TIE_PP):
            best, since_best = row, 0
        else:
            since_best += 1
            if best is not None and since_best >= PATIENCE:
                break
    tried = [set(d["blocks"]) for d in depths]
    stages = per_stage_sets(order, stage)
    bar.total += len(stages)
    for blocks in stages:
        if set(blocks) in tried:
            continue
        row = probe(blocks, "per-stage")
        if row["reached"] and not row["channels_cut"]:  # the blocks alone reach the goal: a larger set only overshoots
            break
    bar.close()
    reached = [r for r in depths if r["reached"]]
    choice = DepthChoice([], ref, single, depths, min_speedup=floor, price=price, stage_times=stage_times)
    if reached and (speed is None or floor is None):
        choice.blocks = list(_preferred(reached)["blocks"])
    elif reached and speed is not None and floor is not None:
        choice.blocks, choice.floor_met = _fastest_enough(reached, depths, probes, speed, floor, progress)
    choice.seconds = time.perf_counter() - t0
    return choice


def _fastest_enough(reached: list[dict[str, Any]], depths: list[dict[str, Any]], probes: dict[int, nn.Module],
                    speed: SpeedCheck, floor: float, progress: bool) -> tuple[list[str], bool]:
    """Time the probes of ``reached`` (``speed`` set to the unpruned model) most accurate first (each row gets
    ``speedups``, ``speedup_se`` and ``fast_enough`` = every speedup at least ``floor`` by one standard error: a probe
    at the floor within its timing noise does not pass) until no untimed one could still be preferred
    (:func:`_preferred`) over the fast-enough ones; ``(the preferred fast-enough probe's blocks, True)``, or the
    fastest timed probe's and False when none is."""
    index = {id(r): i for i, r in enumerate(depths)}
    fast: list[dict[str, Any]] = []
    timed: list[dict[str, Any]] = []
    for row in tqdm(sorted(reached, key=lambda r: -r["val_accuracy"]), desc="depth speed", disable=not progress,
                    dynamic_ncols=True):
        if fast and row["val_accuracy"] < max(r["val_accuracy"] for r in fast) - TIE_PP:
            break
        timing = speed.speedups(probes[index[id(row)]])
        row["speedups"] = {k: v for k, (v, _) in timing.items()}
        row["speedup_se"] = {k: se for k, (_, se) in timing.items()}
        row["fast_enough"] = all(v - se >= floor for v, se in timing.values())
        timed.append(row)
        if row["fast_enough"]:
            fast.append(row)
    if fast:
        return list(_preferred(fast)["blocks"]), True
    return list(max(timed, key=lambda r: min(r["speedups"].values()))["blocks"]), False
