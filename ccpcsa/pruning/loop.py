"""Algorithm 1 of CCPCSA (Zhao et al., Electronics 2023, 12(7):1683), as this product implements it.

Given a trained model M′ (BAM attached) and the reference accuracy Acc (val split):

    repeat (one iteration per training epoch):
        train one epoch; forward hooks accumulate the criterion's channel statistics
        score every channel group; sort globally; prune the m lowest blocks
            (or the fewest lowest blocks that reach this iteration's FLOPs step)
        fine-tune; Acc′ = val accuracy
        if Acc − Acc′ < τ: accept and continue      else: restore the last accepted model, stop
    stop also at the FLOPs/params target or after max_iterations; final fine-tune; return it.

Any registered criterion can drive the loop; only those with ``collects_training_stats`` get hooks.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import placement
from ..criteria import Criterion, ScoreContext
from ..criteria.stats import stats_collector
from ..data import ArrayDataset, BatchLoader, DataSplits
from ..errors import UserError
from ..io.artifacts import atomic_write_json
from ..models.attention import detach_bam
from ..models.complexity import Complexity, count_complexity
from ..models.depth import drop_blocks
from ..surgery.alignment import resolve_alignment
from ..surgery.cost import CostModel, MacsCost
from ..surgery.prune import (
    ChannelPruner,
    channels_per_layer,
    deployed_complexity,
    metapruner_to_target,
)
from ..surgery.target import fewest_prefix, prune_to_target
from ..training.engine import TrainConfig, TrainStream, evaluate, fit, recalibrate_batchnorm
from ..training.speed import Distillation
from .allocation import MEASURED, NEEDS_LATENCY, order_blocks, removable_blocks
from .sensitivity import block_sensitivity
from .settings import PruneConfig as PruneConfig  # re-exported: callers import the settings from here
from .steering import StepGain


@dataclass
class PruneResult:
    """The last accepted model, its history and complexity."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    base: Complexity | None = None
    final: Complexity | None = None
    reference_accuracy: float = float("nan")
    final_val_accuracy: float = float("nan")
    iterations: int = 0
    stop_reason: str = ""
    seconds: float = 0.0
    alignment: int = 1
    alignment_reason: str = ""
    allocation: str = "global"
    left_whole: dict[str, str] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    dropped_blocks: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: iterations, stop reason, val accuracies, MACs/params before and after and their reductions,
        seconds, alignment (and why), allocation, groups left whole, latency measurements (when a probe was used), the
        residual blocks removed whole."""
        assert self.base is not None and self.final is not None
        fr, pr = self.final.reduction_vs(self.base)
        return {"iterations": self.iterations, "stop_reason": self.stop_reason, "reference_val_accuracy": self.reference_accuracy,
                "final_val_accuracy": self.final_val_accuracy, "base": asdict(self.base), "final": asdict(self.final),
                "flops_reduction": fr, "params_reduction": pr, "seconds": self.seconds, "alignment": self.alignment,
                "alignment_reason": self.alignment_reason, "allocation": self.allocation, "left_whole": self.left_whole,
                "latency": self.latency, "dropped_blocks": self.dropped_blocks}


def calibration_batches(data: DataSplits, n_images: int, batch_size: int, device: torch.device | str,
                        seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_images`` of a seeded permutation of the train split, normalized, no augmentation."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=g)[:n_images].numpy()
    sub = ArrayDataset(data.train.images[idx], data.train.labels[idx])
    yield from BatchLoader(sub, batch_size, data.mean, data.std, device=device)


class LatencyProbe(Protocol):
    """What the loop needs from the target runtime for a latency target (``export.layer_latency.RuntimeLatencyProbe``,
    ``export.target_profile.ProfileLatencyProbe``):
    the unpruned model as the reference, the reference's and a model's latency measured interleaved (ms per batch,
    the deployed graph), and the latency cost model of a pruner calibrated to a measured latency."""

    def set_reference(self, model: nn.Module) -> float:
        """Keep ``model`` (the unpruned one) as the reference; return its latency in ms."""
        ...

    def measure_pair(self, model: nn.Module | None) -> tuple[float, float]:
        """``(reference ms, model ms)`` measured interleaved (``None``: the reference against itself)."""
        ...

    def cost_model(self, pruner: ChannelPruner, measured_ms: float) -> CostModel:
        """The latency cost model of ``pruner``'s model, calibrated so its current cost is ``measured_ms``."""
        ...


def run_pruning(model: nn.Module, data: DataSplits, criterion: Criterion, cfg: PruneConfig, train_cfg: TrainConfig, *,
                input_size: int = 32, device: torch.device | str | None = None, reference_accuracy: float | None = None,
                history_path: str | Path | None = None, progress: bool = True,
                latency: LatencyProbe | None = None, teacher: nn.Module | None = None) -> PruneResult:
    """Run Algorithm 1 on ``model`` (modified in place) and return the last accepted model.

    ``train_cfg`` supplies batch size, augmentation and ``max_steps_per_epoch``; its epochs/lr/schedule
    are replaced by the loop's (one epoch per iteration at ``cfg.lr``, cosine within a fine-tune).
    The history (JSON list, one row per iteration) is written atomically after every iteration.

    Kept widths are multiples of the alignment (``cfg.round_to``, ``auto``: :func:`resolve_alignment` for
    ``cfg.target_runtime``); blocks go in the order of ``cfg.allocation`` (:mod:`ccpcsa.pruning.allocation`). With
    ``cfg.target_speedup`` / ``cfg.target_latency_ms`` the target is latency on the runtime ``latency`` measures:
    each iteration removes blocks until the latency table's estimate reaches that iteration's step, and the loop
    stops when the *measured* speedup over the unpruned model (interleaved timing) reaches the target.

    All fits of the loop are one pass over the data (:class:`ccpcsa.training.engine.TrainStream`: no fit repeats another's
    images); ``cfg.lr_schedule`` says how the learning rate runs across them; ``cfg.recalibrate_bn`` re-estimates the
    BatchNorm statistics on that many train images after every surgery. ``teacher``: the model distilled from with
    ``cfg.distill`` (default: a copy of ``model`` as given).
    """
    cfg.validate()
    if cfg.by_alignment:  # the settings of the CPU's channel block (the pipeline has applied them already)
        from .operating_point import apply_by_alignment

        cfg, note = apply_by_alignment(cfg)
        if note:
            tqdm.write(note)
    t0 = time.perf_counter()
    device = placement.module_device(placement.place(model, device))  # None: where the model already is
    seed = cfg.seed or 0
    ft = replace(train_cfg, lr=cfg.lr, schedule="cosine", warmup_epochs=0.0, seed=seed)
    final_ft = ft
    if cfg.lr_schedule == "continuous":
        ft = replace(ft, schedule="constant")
    stream = TrainStream()
    ref = reference_accuracy if reference_accuracy is not None else evaluate(model, data.val, data.mean, data.std, device=device)[0]
    base = deployed_complexity(model, input_size, cfg.remove_attention)  # MACs targets refer to the deployed graph
    align, align_why = resolve_alignment(cfg.round_to, cfg.target_runtime)
    target_macs = base.macs * (1 - cfg.target_flops_reduction)
    target_params = base.params * (1 - cfg.target_params_reduction) if cfg.target_params_reduction is not None else None
    if cfg.round_to_wide is not None:
        align_why += (f"; layers of ≥ {2 * cfg.round_to_wide} channels in multiples of {math.lcm(align, cfg.round_to_wide)} "
                      "(prune.round_to_wide)")
    result = PruneResult(model=model, base=base, reference_accuracy=ref, alignment=align, alignment_reason=align_why,
                         allocation=cfg.allocation)
    def new_pruner(m: nn.Module, sizes: dict[str, int] | None = None) -> ChannelPruner:
        """The loop's one pruner setup (alignment, floors, scope) over ``m``; ``sizes``: the original widths."""
        return ChannelPruner(m, input_size, align, cfg.min_channels, cfg.max_layer_ratio, sizes, scope=cfg.scope,
                             wide_round_to=cfg.round_to_wide)

    original, current = model, base  # the model as given: the latency reference and the default teacher
    if cfg.drop_blocks:  # depth surgery first (prune.drop_blocks), then channels
        original = copy.deepcopy(model)
        result.dropped_blocks = drop_blocks(model, cfg.drop_blocks, input_size)
        current = deployed_complexity(model, input_size, cfg.remove_attention)
        if cfg.recalibrate_bn > 0:
            recalibrate_batchnorm(model, lambda: calibration_batches(data, cfg.recalibrate_bn, train_cfg.batch_size, device,
                                                                     seed + 999))
        tqdm.write(f"removed {len(cfg.drop_blocks)} block(s) whole ({', '.join(cfg.drop_blocks)}): MACs "
                   f"-{100 * current.reduction_vs(base)[0]:.1f}% before channel pruning (prune.drop_blocks)")
    pruner = new_pruner(model)
    original_sizes = pruner.original_sizes
    # said once, even without progress output: the widths (and so the speed/accuracy trade) depend on the CPU
    tqdm.write(f"kept widths in multiples of {align}: {align_why}")
    if pruner.fixed:  # said even without progress output: the user's model is not pruned where they may expect it
        tqdm.write("left whole: " + "; ".join(f"{k} ({why})" for k, why in pruner.fixed.items()))
    result.left_whole = dict(pruner.fixed)
    lat_mode = cfg.target_speedup is not None or cfg.target_latency_ms is not None
    target_speedup = cfg.target_speedup
    speedup_now = 1.0
    steer = StepGain()  # the share of the table's predicted drop the steps really delivered
    if (lat_mode or cfg.allocation in NEEDS_LATENCY) and latency is None:
        raise UserError(f"prune.target_speedup / prune.target_latency_ms / prune.allocation=latency need a latency "
                        f"measurement on {cfg.target_runtime}, which this run cannot make; use prune.target_flops_reduction "
                        "with another allocation")
    if latency is not None:
        base_ms = latency.set_reference(original)
    if lat_mode:
        assert latency is not None
        if target_speedup is None:
            target_speedup = base_ms / float(cfg.target_latency_ms)  # type: ignore[arg-type]
            if target_speedup <= 1:
                raise UserError(f"prune.target_latency_ms {cfg.target_latency_ms} ms is not below the unpruned model's "
                                f"{base_ms:.3f} ms at batch {cfg.latency_batch}; nothing to prune")
    if latency is not None:
        result.latency = {"batch": cfg.latency_batch, "unpruned_ms": base_ms, "target_speedup": target_speedup}
    accepted = copy.deepcopy(model)
    # knowledge distillation from the unpruned model (with its BAM) in every fine-tune of the loop
    kd = Distillation((teacher if teacher is not None else copy.deepcopy(original)).eval(), cfg.distill_weight,
                      cfg.distill_temperature) if cfg.distill else None

    def sensitivity(p: ChannelPruner, scores: dict[str, Any]) -> dict[str, list[float]] | None:
        """The measured per-block loss increase for the allocations that price it (None for the others)."""
        if cfg.allocation not in MEASURED:
            return None
        return block_sensitivity(p, removable_blocks(p, scores),
                                 calibration_batches(data, cfg.sensitivity_images, train_cfg.eval_batch_size, device, seed + 7))

    def reached(c: Complexity) -> bool:
        if lat_mode:
            return speedup_now >= float(target_speedup)  # type: ignore[arg-type]
        return c.macs <= target_macs * 1.0005 and (target_params is None or c.params <= target_params)

    stop = "max_iterations"
    bar = tqdm(total=cfg.max_iterations, desc=f"prune[{criterion.name}]", disable=not progress, dynamic_ncols=True)
    for it in range(1, cfg.max_iterations + 1):
        if reached(current):
            stop = "target reached"
            break
        ti = time.perf_counter()
        # 1) one training epoch; hooks accumulate the statistics the criterion needs
        stats = None
        if criterion.collects_training_stats:
            pruner = new_pruner(model, original_sizes)
            with stats_collector(model, pruner, criterion.features, consumers=criterion.wants_consumer_moments) as col:
                fit(model, data, replace(ft, epochs=1), device=device, progress=progress, desc=f"prune it{it} stats", distill=kd,
                    stream=stream)
            stats = col.stats
        else:
            fit(model, data, replace(ft, epochs=1), device=device, progress=progress, desc=f"prune it{it} train", distill=kd,
                stream=stream)
        # 2) score all groups, order the blocks (allocation), prune the first ones
        pruner = new_pruner(model, original_sizes)
        ctx = ScoreContext(model, pruner, stats,
                           lambda: calibration_batches(data, cfg.calibration_images, train_cfg.batch_size, device, seed),
                           seed=seed + it)
        model.eval()
        scores = criterion.score(ctx) if cfg.pruner == "ccpcsa" else {}
        compensation = None
        comp_reports: list[Any] = []
        if cfg.compensate and hasattr(criterion, "compensate"):  # the criterion's own weight compensation, before surgery
            def compensation(plan: dict[str, list[int]], _p: ChannelPruner = pruner, _out: list[Any] = comp_reports) -> None:
                _out.append(criterion.compensate(_p, plan))  # type: ignore[attr-defined]
        est: dict[str, float] = {}
        if lat_mode:
            assert latency is not None and target_speedup is not None
            ref_ms, cur_ms = latency.measure_pair(model)
            lat_cost = latency.cost_model(pruner, cur_ms)
            order = order_blocks(pruner, scores, cfg.allocation, lat_cost, sensitivity(pruner, scores))
            goal_speedup = min(float(target_speedup), 1 / max(1e-6, 1 - cfg.step_flops_reduction * it))
            goal_ms = ref_ms / goal_speedup
            start, aim_ms = (ref_ms, cur_ms), steer.aim(cur_ms, goal_ms)
            prefix = lat_cost.prefix_costs(order)
            if "floor_speedup_estimate" not in result.latency:  # what the table says the floors allow, said once
                floor = ref_ms / max(lat_cost.proportional().prefix_costs(order)[-1], 1e-9)
                result.latency["floor_speedup_estimate"] = floor
                if floor < float(target_speedup):
                    tqdm.write(f"warning: prune.target_speedup {float(target_speedup):.2f}x at batch {cfg.latency_batch} is likely "
                               f"out of reach: with every layer at its floor (alignment {align}, prune.min_channels, "
                               f"prune.max_layer_ratio) the latency table estimates {floor:.2f}x; lower the target, "
                               "prune.round_to or the floors")
            k = fewest_prefix(len(order), prefix.__getitem__, aim_ms, prefix)
            k = max(k, 1) if order else 0  # already past this step's goal (an earlier step overshot): take a step anyway
            if cfg.groups_per_iteration is not None:
                k = min(cfg.groups_per_iteration, len(order))
            est = {"estimated_ms": prefix[k], "goal_ms": goal_ms, "aim_ms": aim_ms, "gain": steer.gain}
            plan, new = prune_to_target(pruner, scores, blocks=k, ranked=order, before_apply=compensation)
        elif cfg.pruner == "torch-pruning":  # the external reference: the library's MetaPruner picks and cuts
            goal = max(target_macs, base.macs * (1 - cfg.step_flops_reduction * it), 0)
            before = channels_per_layer(model)
            metapruner_to_target(model, input_size, min(goal, current.macs - 1), round_to=align,
                                 max_layer_ratio=cfg.max_layer_ratio, exclude_attention=cfg.remove_attention)
            after = channels_per_layer(model)
            plan = {k: list(range(before[k] - after.get(k, 0))) for k in before if before[k] != after.get(k, 0)}
        else:
            if cfg.allocation in NEEDS_LATENCY:  # priced in milliseconds of the target runtime, stopped at the MACs target
                assert latency is not None
                cost: CostModel | None = latency.cost_model(pruner, latency.measure_pair(model)[1])
            else:
                cost = MacsCost(pruner) if cfg.allocation in ("cost", "sensitivity-macs") else None
            order = order_blocks(pruner, scores, cfg.allocation, cost, sensitivity(pruner, scores))
            if cfg.groups_per_iteration is not None:
                plan, new = prune_to_target(pruner, scores, blocks=cfg.groups_per_iteration, ranked=order, before_apply=compensation)
            else:
                goal = max(target_macs, base.macs * (1 - cfg.step_flops_reduction * it), 0)
                plan, new = prune_to_target(pruner, scores, target_macs=min(goal, current.macs - 1), ranked=order,
                                            exclude_attention=cfg.remove_attention, before_apply=compensation)
        new = deployed_complexity(model, input_size, cfg.remove_attention)
        removed = sum(len(v) for v in plan.values())
        if removed == 0:
            stop = "nothing left to prune (per-layer floors or alignment reached)"
            break
        if cfg.recalibrate_bn > 0:  # the surgery changed every BN's input statistics: re-estimate them before training on
            recalibrate_batchnorm(model, lambda _it=it: calibration_batches(data, cfg.recalibrate_bn, train_cfg.batch_size,
                                                                             device, seed + 1000 + _it))
        # 3) fine-tune, measure, guard
        if cfg.finetune_epochs > 0:  # the fit's last epoch evaluated this very model on data.val: no second pass
            acc = fit(model, data, replace(ft, epochs=cfg.finetune_epochs), device=device, progress=progress,
                      desc=f"prune it{it} finetune", distill=kd, stream=stream).val_accuracy
        else:
            acc = evaluate(model, data.val, data.mean, data.std, device=device)[0]
        drop = ref - acc
        ok = drop < cfg.tolerance
        fr, pr = new.reduction_vs(base)
        row = {"iteration": it, "macs": new.macs, "params": new.params, "flops_reduction": fr, "params_reduction": pr,
               "val_accuracy": acc, "drop_pp": drop, "accepted": ok, "channels_removed": removed,
               "channels": channels_per_layer(model), "seconds": time.perf_counter() - ti,
               "compensated_groups": len(comp_reports[0].compensated) if comp_reports else 0}
        if lat_mode:
            assert latency is not None
            ref_ms, cur_ms = latency.measure_pair(model)
            steer.record(start, est["estimated_ms"], (ref_ms, cur_ms))
            row.update(est, latency_ms=cur_ms, unpruned_ms=ref_ms, speedup=ref_ms / cur_ms)
        result.history.append(row)
        if history_path is not None:
            atomic_write_json(history_path, result.history)
        bar.update(1)
        bar.set_postfix(flops=f"-{100 * fr:.1f}%", acc=f"{acc:.2f}", drop=f"{drop:+.2f}pp", ok=ok)
        if progress:
            speed = f" speedup {row['speedup']:.2f}x (goal {target_speedup:.2f}x)" if lat_mode else ""
            tqdm.write(f"prune iteration {it}: FLOPs -{100 * fr:.1f}% params -{100 * pr:.1f}%{speed} val {acc:.2f}% "
                       f"(drop {drop:+.2f} pp) {'accepted' if ok else 'REJECTED → restoring last accepted model'}")
        if not ok:
            model = copy.deepcopy(accepted)
            stop = f"accuracy drop {drop:.2f} pp ≥ tolerance {cfg.tolerance} pp"
            break
        accepted = copy.deepcopy(model)
        current = new
        if lat_mode:
            speedup_now = float(row["speedup"])
        result.iterations = it
    else:
        if reached(current):
            stop = "target reached"
    bar.close()
    detached = detach_bam(model) if cfg.remove_attention else 0
    # Fine-tune after pruning — and always after removing BAM, whose gates the network had learned to rely on.
    final_val: float | None = None
    if cfg.final_finetune_epochs > 0 and (result.iterations > 0 or detached > 0 or result.dropped_blocks):
        final_val = fit(model, data, replace(final_ft, epochs=cfg.final_finetune_epochs), device=device, progress=progress,
                        desc="prune final finetune", distill=kd, stream=stream).val_accuracy
    result.model = model
    result.final = count_complexity(model, input_size)
    result.final_val_accuracy = final_val if final_val is not None else evaluate(model, data.val, data.mean, data.std,
                                                                                 device=device)[0]
    if latency is not None:
        ref_ms, cur_ms = latency.measure_pair(model)
        result.latency.update(final_unpruned_ms=ref_ms, final_ms=cur_ms, final_speedup=ref_ms / cur_ms)
    result.stop_reason = stop
    result.seconds = time.perf_counter() - t0
    if history_path is not None:
        atomic_write_json(history_path, result.history)
    return result
