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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

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
from ..surgery.prune import (
    ChannelPruner,
    channels_per_layer,
    deployed_complexity,
)
from ..training.engine import TrainConfig, TrainStream, evaluate, fit, recalibrate_batchnorm
from ..training.speed import Distillation
from ..training.teacher_views import TeacherViews
from .allocation import SENSITIVITY_ALLOCATIONS, removable_blocks
from .depth_choice import CutGoal, LatencyGoal, MacsGoal, SpeedCheck, choose_blocks
from .planner import Compensation, make_planner
from .planner import LatencyProbe as LatencyProbe  # re-exported: the probes name it here
from .sensitivity import block_sensitivity
from .settings import PruneConfig as PruneConfig  # re-exported: callers import the settings from here


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
    depth_choice: dict[str, Any] | None = None
    train_precision: str = "float32"
    teacher_views: dict[str, Any] | None = None
    feature_distill: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready: iterations, stop reason, val accuracies, MACs/params before and after and their reductions,
        seconds, alignment (and why), allocation, groups left whole, latency measurements (when a probe was used), the
        residual blocks removed whole and, when they were chosen (``prune.depth.drop_blocks: auto``), the search; the
        fine-tunes' precision (``train.amp``, :func:`ccpcsa.placement.amp_dtype`) and why; with
        ``prune.recovery.distill.views``, the cached views (``views``, ``images``, ``seconds`` to build); with
        ``prune.recovery.distill.features``, the final fine-tune's matched stages
        (:meth:`ccpcsa.training.feature_distill.FeatureTaps.record`)."""
        assert self.base is not None and self.final is not None
        fr, pr = self.final.reduction_vs(self.base)
        return {"iterations": self.iterations, "stop_reason": self.stop_reason, "reference_val_accuracy": self.reference_accuracy,
                "final_val_accuracy": self.final_val_accuracy, "base": asdict(self.base), "final": asdict(self.final),
                "flops_reduction": fr, "params_reduction": pr, "seconds": self.seconds, "alignment": self.alignment,
                "alignment_reason": self.alignment_reason, "allocation": self.allocation, "left_whole": self.left_whole,
                "latency": self.latency, "dropped_blocks": self.dropped_blocks, "depth_choice": self.depth_choice,
                "train_precision": self.train_precision, "teacher_views": self.teacher_views,
                "feature_distill": self.feature_distill}


def calibration_batches(data: DataSplits, n_images: int, batch_size: int, device: torch.device | str,
                        seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_images`` of a seeded permutation of the train split, normalized, no augmentation."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=g)[:n_images].numpy()
    sub = ArrayDataset(data.train.images[idx], data.train.labels[idx])
    yield from BatchLoader(sub, batch_size, data.mean, data.std, device=device)


def run_pruning(model: nn.Module, data: DataSplits, criterion: Criterion, cfg: PruneConfig, train_cfg: TrainConfig, *,
                input_size: int = 32, device: torch.device | str | None = None, reference_accuracy: float | None = None,
                history_path: str | Path | None = None, progress: bool = True,
                latency: LatencyProbe | None = None, teacher: nn.Module | None = None,
                speed: SpeedCheck | None = None) -> PruneResult:
    """Run Algorithm 1 on ``model`` (modified in place) and return the last accepted model.

    Each iteration: score (a statistics epoch for criteria that collect them, then the criterion's channel scores) →
    plan and cut (the step planner of :func:`ccpcsa.pruning.planner.make_planner`: MACs/params target, latency target
    on ``latency``'s runtime, or the Torch-Pruning reference) → recover (BatchNorm re-estimate, fine-tune) → guard
    (accept while the val accuracy drop < ``cfg.steps.tolerance``, else restore the last accepted model and stop). The loop
    stops when the planner's target is reached, nothing is left to prune or after ``cfg.steps.max_iterations``; a final
    fine-tune follows. The history (JSON list, one row per iteration) is written atomically after every iteration.

    ``train_cfg`` supplies batch size, augmentation and ``max_steps_per_epoch``; its epochs/lr/schedule are replaced by
    the loop's (:class:`_LoopRun`). Kept widths are multiples of the alignment (``cfg.widths.round_to``, ``auto``:
    :func:`resolve_alignment` for ``cfg.target.runtime``). ``teacher``: the model distilled from with ``cfg.recovery.distill.enabled``
    (default: a copy of ``model`` as given). ``speed``: the timer of ``cfg.depth.min_speedup``
    (:class:`ccpcsa.pruning.depth_choice.SpeedCheck`; the pipeline builds it for the run's target).
    """
    t0 = time.perf_counter()
    run = _LoopRun(model, data, criterion, _settled(cfg), train_cfg, input_size, device, reference_accuracy, teacher, latency,
                   progress, speed)
    cfg, result = run.cfg, run.result
    planner = make_planner(cfg, result.base, latency, result.latency.get("unpruned_ms"), run.sensitivity,  # type: ignore[arg-type]
                           result.latency, result.alignment)
    stop = "max_iterations"
    bar = tqdm(total=cfg.steps.max_iterations, desc=f"prune[{criterion.name}]", disable=not progress, dynamic_ncols=True)
    for it in range(1, cfg.steps.max_iterations + 1):
        if planner.reached(run.current):
            stop = "target reached"
            break
        ti = time.perf_counter()
        pruner, scores = run.score(it, progress)  # 1) statistics epoch, channel scores
        plan, estimate = planner.cut(it, run.model, pruner, scores, run.current, run.compensation(pruner))  # 2) plan, cut
        if not any(plan.values()):
            stop = "nothing left to prune (per-layer floors or alignment reached)"
            break
        row = run.recover(it, plan, ti, progress)  # 3) BN re-estimate, fine-tune, val accuracy
        row.update(planner.observe(run.model, estimate))
        result.history.append(row)
        if history_path is not None:
            atomic_write_json(history_path, result.history)
        _say(bar, it, row, planner.progress(row), progress)
        if not row["accepted"]:  # 4) guard
            run.restore()
            stop = f"accuracy drop {row['drop_pp']:.2f} pp ≥ tolerance {cfg.steps.tolerance} pp"
            break
        run.accept()
        planner.accepted(row)
        result.iterations = it
    else:
        if planner.reached(run.current):
            stop = "target reached"
    bar.close()
    run.finish(progress)
    result.stop_reason, result.seconds = stop, time.perf_counter() - t0
    if history_path is not None:
        atomic_write_json(history_path, result.history)
    return result


def _say(bar: Any, it: int, row: dict[str, Any], extra: str, progress: bool) -> None:
    """Advance the progress bar by iteration ``it`` and, with ``progress``, print its line (``extra``: the planner's)."""
    bar.update(1)
    bar.set_postfix(flops=f"-{100 * row['flops_reduction']:.1f}%", acc=f"{row['val_accuracy']:.2f}",
                    drop=f"{row['drop_pp']:+.2f}pp", ok=row["accepted"])
    if progress:
        tqdm.write(f"prune iteration {it}: FLOPs -{100 * row['flops_reduction']:.1f}% params -{100 * row['params_reduction']:.1f}%"
                   f"{extra} val {row['val_accuracy']:.2f}% (drop {row['drop_pp']:+.2f} pp) "
                   f"{'accepted' if row['accepted'] else 'REJECTED → restoring last accepted model'}")


def _settled(cfg: PruneConfig) -> PruneConfig:
    """``cfg`` validated, with the CPU channel block's settings applied (``prune.by_alignment``; the pipeline has
    applied them already, so this acts on configs built directly)."""
    cfg.validate()
    if cfg.by_alignment:
        from .operating_point import apply_by_alignment

        cfg, note = apply_by_alignment(cfg)
        if note:
            tqdm.write(note)
    return cfg


class _LoopRun:
    """The state Algorithm 1 carries across iterations and the work each phase does on it: the model, the fits' one
    pass over the data (:class:`TrainStream`: no fit repeats another's images), the learning-rate schedule
    (``cfg.recovery.lr_schedule``: ``continuous`` holds ``cfg.recovery.lr`` through the iterations and anneals once in the final
    fine-tune; ``restart`` decays a cosine in every fit), distillation, the pruner's settings, the last accepted
    model and the result being built."""

    def __init__(self, model: nn.Module, data: DataSplits, criterion: Criterion, cfg: PruneConfig, train_cfg: TrainConfig,
                 input_size: int, device: torch.device | str | None, reference_accuracy: float | None,
                 teacher: nn.Module | None, latency: LatencyProbe | None, progress: bool = True,
                 speed: SpeedCheck | None = None) -> None:
        self.data, self.criterion, self.cfg, self.train_cfg, self.input_size = data, criterion, cfg, train_cfg, input_size
        self.device = placement.module_device(placement.place(model, device))  # None: where the model already is
        self.seed = cfg.steps.seed or 0
        self.final_ft = replace(train_cfg, lr=cfg.recovery.lr, schedule="cosine", warmup_epochs=0.0, seed=self.seed)
        self.ft = replace(self.final_ft, schedule="constant") if cfg.recovery.lr_schedule == "continuous" else self.final_ft
        self.stream = TrainStream()
        self.ref = reference_accuracy if reference_accuracy is not None else evaluate(model, data.val, data.mean, data.std,
                                                                                      device=self.device)[0]
        base = deployed_complexity(model, input_size, cfg.recovery.remove_attention)  # MACs targets refer to the deployed graph
        align, why = resolve_alignment(cfg.widths.round_to, cfg.target.runtime)
        if cfg.widths.round_to_wide is not None:
            why += (f"; layers of ≥ {2 * cfg.widths.round_to_wide} channels in multiples of {math.lcm(align, cfg.widths.round_to_wide)} "
                    "(prune.widths.round_to_wide)")
        self.result = PruneResult(model=model, base=base, reference_accuracy=self.ref, alignment=align, alignment_reason=why,
                                  allocation=cfg.steps.allocation, train_precision=placement.amp_label(self.device, train_cfg.amp))
        self.model, self.original, self.current = model, model, base  # the model as given: latency reference, default teacher
        self.new = base  # the deployed complexity of the model after the latest cut (recover → accept)
        self.original_sizes: dict[str, int] | None = None
        if cfg.depth.auto:
            self._choose_blocks(latency, progress, speed)
        if self.cfg.depth.drop_blocks:
            self._drop_blocks()
        pruner = self.new_pruner()
        self.original_sizes = pruner.original_sizes
        # said once, even without progress output: the widths (and so the speed/accuracy trade) depend on the CPU
        tqdm.write(f"kept widths in multiples of {align}: {why}")
        tqdm.write(f"fine-tunes train in {self.result.train_precision} (train.amp)")
        if pruner.fixed:  # said even without progress output: the user's model is not pruned where they may expect it
            tqdm.write("left whole: " + "; ".join(f"{k} ({w})" for k, w in pruner.fixed.items()))
        self.result.left_whole = dict(pruner.fixed)
        if latency is not None:
            self.result.latency = {"batch": cfg.target.latency_batch, "unpruned_ms": latency.set_reference(self.original),
                                   "target_speedup": None}
        self.latency = latency
        self.accepted = copy.deepcopy(model)
        # knowledge distillation from the unpruned model (with its BAM) in every fine-tune of the loop
        kd = cfg.recovery.distill
        self.kd = Distillation((teacher if teacher is not None else copy.deepcopy(self.original)).eval(), kd.weight,
                               kd.temperature, TeacherViews(kd.views, self.seed) if kd.views else None,
                               kd.features) if kd.enabled else None
        self.comp_reports: list[Any] = []

    def _choose_blocks(self, latency: LatencyProbe | None, progress: bool, speed: SpeedCheck | None) -> None:
        """``prune.depth.drop_blocks: auto``: the blocks :func:`choose_blocks` picks at the loop's target (the MACs
        target, or the latency table's estimate of the speed target) in the loop's widths, priced by ``depth.price`` and
        timed against ``depth.min_speedup`` by ``speed`` when set; the config the loop runs names them, the result
        records the search."""
        cfg, t = self.cfg, self.cfg.target
        if cfg.depth.timed and speed is None:
            keys, fixes = cfg.depth.timed_keys()
            verb = "need" if " and " in keys else "needs"
            raise UserError(f"{keys} {verb} the target's timer, which the pipeline builds (python -m pipeline run); "
                            f"here set {fixes}")
        exclude = cfg.recovery.remove_attention
        assert self.result.base is not None
        goal: CutGoal = MacsGoal(self.result.base.macs * (1 - t.flops_reduction), exclude)
        if t.on_latency and latency is not None:
            ref_ms = latency.set_reference(self.model)
            goal = LatencyGoal(latency, float(t.latency_ms) if t.latency_ms is not None else ref_ms / float(t.speedup))  # type: ignore[arg-type]
        probe_val = self.data.val.sample(cfg.depth.probe_images, seed=self.seed)  # one sample for every probe: paired
        recal = self.recalibration(999) if cfg.recovery.recalibrate_bn > 0 else None
        choice = choose_blocks(self.model, self.new_pruner, goal,
                               lambda m: evaluate(m, probe_val, self.data.mean, self.data.std, device=self.device)[0], recal,
                               max_blocks=cfg.depth.max_blocks, input_size=self.input_size, exclude_attention=exclude,
                               progress=progress, speed=speed, price=cfg.depth.price)
        self.result.depth_choice = choice.summary()
        self.cfg = cfg.updated({"depth.drop_blocks": choice.blocks, "depth.min_speedup": None})
        if choice.stage_times:
            tqdm.write("prune.depth.price time: each block's share of the target's time, its stage's blocks timed "
                       "together (slowest of FP32 / INT8 and batch sizes): " + ", ".join(
                           f"{'/'.join(s['blocks'])} {100 * s['time_share']:.1f} %" for s in choice.stage_times))
        tqdm.write(f"prune.depth.drop_blocks: auto → {', '.join(choice.blocks) or 'no block'} (one-shot val % at the target "
                   "by blocks removed, per stage marked /s: " + ", ".join(f"{len(d['blocks'])}{'/s' if d['family'] == 'per-stage' else ''}: "
                                                      f"{d['val_accuracy']:.2f}{'' if d['reached'] else ' short'}"
                                                      for d in choice.depths) + f"; {choice.seconds:.0f} s)")
        timed = [d for d in choice.depths if "speedups" in d]
        if timed:
            tqdm.write(f"timed against prune.depth.min_speedup {choice.min_speedup}× (slowest of FP32 / INT8 and batch sizes): "
                       + ", ".join(f"{len(d['blocks'])}{'/s' if d['family'] == 'per-stage' else ''}: "
                                   f"{min(d['speedups'].values()):.2f}×{'' if d['fast_enough'] else ' too slow'}" for d in timed))
        if choice.floor_met is False:
            tqdm.write(f"prune.depth.min_speedup {choice.min_speedup}: no probe reached it; kept the fastest. Raise "
                       "prune.target.flops_reduction or lower the floor")

    def _drop_blocks(self) -> None:
        """Depth surgery first (``prune.depth.drop_blocks``), BatchNorm re-estimated, then channels."""
        cfg = self.cfg
        self.original = copy.deepcopy(self.model)
        self.result.dropped_blocks = drop_blocks(self.model, cfg.depth.drop_blocks, self.input_size)
        self.current = deployed_complexity(self.model, self.input_size, cfg.recovery.remove_attention)
        if cfg.recovery.recalibrate_bn > 0:
            recalibrate_batchnorm(self.model, self.recalibration(999))
        assert self.result.base is not None
        tqdm.write(f"removed {len(cfg.depth.drop_blocks)} block(s) whole ({', '.join(cfg.depth.drop_blocks)}): MACs "
                   f"-{100 * self.current.reduction_vs(self.result.base)[0]:.1f}% before channel pruning (prune.depth.drop_blocks)")

    def recalibration(self, offset: int) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """The BatchNorm re-estimate's batches after a surgery: ``prune.recovery.recalibrate_bn`` train images drawn with
        seed ``steps.seed + offset`` (999 after depth surgery, 1000 + iteration after a channel step)."""
        return lambda: calibration_batches(self.data, self.cfg.recovery.recalibrate_bn, self.train_cfg.batch_size, self.device,
                                           self.seed + offset)

    def new_pruner(self, model: nn.Module | None = None) -> ChannelPruner:
        """The loop's one pruner setup (alignment, floors, scope) over ``model`` (default: the current model), against
        the original widths."""
        c = self.cfg
        return ChannelPruner(self.model if model is None else model, self.input_size, self.result.alignment, c.widths.min_channels,
                             c.widths.max_layer_ratio, self.original_sizes, scope=c.widths.scope, wide_round_to=c.widths.round_to_wide)

    def sensitivity(self, p: ChannelPruner, scores: dict[str, Any]) -> dict[str, list[float]] | None:
        """The observed per-block loss increase for the allocations that price it (None for the others)."""
        if self.cfg.steps.allocation not in SENSITIVITY_ALLOCATIONS:
            return None
        return block_sensitivity(p, removable_blocks(p, scores),
                                 calibration_batches(self.data, self.cfg.steps.sensitivity_images, self.train_cfg.eval_batch_size,
                                                     self.device, self.seed + 7))

    def score(self, it: int, progress: bool) -> tuple[ChannelPruner, dict[str, Any]]:
        """One training epoch (hooks accumulate the statistics the criterion needs), then every group's channel scores
        (none for the Torch-Pruning reference, which brings its own importance)."""
        cfg, model = self.cfg, self.model
        stats = None
        if self.criterion.collects_training_stats:
            with stats_collector(model, self.new_pruner(), self.criterion.features,
                                 consumers=self.criterion.wants_consumer_moments) as col:
                fit(model, self.data, replace(self.ft, epochs=1), device=self.device, progress=progress,
                    desc=f"prune it{it} stats", distill=self.kd, stream=self.stream)
            stats = col.stats
        else:
            fit(model, self.data, replace(self.ft, epochs=1), device=self.device, progress=progress,
                desc=f"prune it{it} train", distill=self.kd, stream=self.stream)
        pruner = self.new_pruner()
        ctx = ScoreContext(model, pruner, stats,
                           lambda: calibration_batches(self.data, cfg.criterion.calibration_images, self.train_cfg.batch_size,
                                                       self.device, self.seed),
                           seed=self.seed + it)
        model.eval()
        return pruner, (self.criterion.score(ctx) if cfg.steps.pruner == "ccpcsa" else {})

    def compensation(self, pruner: ChannelPruner) -> Compensation:
        """The criterion's own weight compensation, run on the plan before the surgery (``prune.criterion.compensate``)."""
        self.comp_reports = []
        if not (self.cfg.criterion.compensate and hasattr(self.criterion, "compensate")):
            return None
        reports, criterion = self.comp_reports, self.criterion

        def compensate(plan: dict[str, list[int]]) -> None:
            reports.append(criterion.compensate(pruner, plan))  # type: ignore[attr-defined]
        return compensate

    def recover(self, it: int, plan: dict[str, list[int]], started: float, progress: bool) -> dict[str, Any]:
        """After the cut: BatchNorm statistics re-estimated (``cfg.recovery.recalibrate_bn`` images; the surgery changed every
        BN's input), ``cfg.recovery.finetune_epochs`` of fine-tune and the val accuracy; the iteration's history row, with the
        guard's verdict ``accepted = reference − val < cfg.steps.tolerance``."""
        cfg, model = self.cfg, self.model
        new = deployed_complexity(model, self.input_size, cfg.recovery.remove_attention)
        if cfg.recovery.recalibrate_bn > 0:
            recalibrate_batchnorm(model, self.recalibration(1000 + it))
        if cfg.recovery.finetune_epochs > 0:  # the fit's last epoch evaluated this very model on data.val: no second pass
            acc = fit(model, self.data, replace(self.ft, epochs=cfg.recovery.finetune_epochs), device=self.device, progress=progress,
                      desc=f"prune it{it} finetune", distill=self.kd, stream=self.stream).val_accuracy
        else:
            acc = evaluate(model, self.data.val, self.data.mean, self.data.std, device=self.device)[0]
        assert self.result.base is not None
        fr, pr = new.reduction_vs(self.result.base)
        self.new = new
        return {"iteration": it, "macs": new.macs, "params": new.params, "flops_reduction": fr, "params_reduction": pr,
                "val_accuracy": acc, "drop_pp": self.ref - acc, "accepted": self.ref - acc < cfg.steps.tolerance,
                "channels_removed": sum(len(v) for v in plan.values()), "channels": channels_per_layer(model),
                "seconds": time.perf_counter() - started,
                "compensated_groups": len(self.comp_reports[0].compensated) if self.comp_reports else 0}

    def accept(self) -> None:
        """Keep the current model as the last accepted one."""
        self.accepted = copy.deepcopy(self.model)
        self.current = self.new

    def restore(self) -> None:
        """Go back to the last accepted model."""
        self.model = copy.deepcopy(self.accepted)

    def finish(self, progress: bool) -> None:
        """BAM detached (``cfg.recovery.remove_attention``), the final fine-tune (after any pruning, and always after removing BAM,
        whose gates the network had learned to rely on), final complexity, val accuracy and latency into the result."""
        cfg, model, result = self.cfg, self.model, self.result
        detached = detach_bam(model) if cfg.recovery.remove_attention else 0
        final_val: float | None = None
        if cfg.recovery.final_finetune_epochs > 0 and (result.iterations > 0 or detached > 0 or result.dropped_blocks):
            final_fit = fit(model, self.data, replace(self.final_ft, epochs=cfg.recovery.final_finetune_epochs),
                            device=self.device, progress=progress, desc="prune final finetune", distill=self.kd,
                            stream=self.stream)
            final_val = final_fit.val_accuracy
            result.feature_distill = final_fit.speed.get("feature_distill")
        result.model = model
        views = self.kd.views if self.kd is not None else None
        if views is not None and views.built is not None:
            result.teacher_views = {"views": views.built.k, "images": len(views.built.dataset), "seconds": views.seconds}
        result.final = count_complexity(model, self.input_size)
        result.final_val_accuracy = final_val if final_val is not None else evaluate(model, self.data.val, self.data.mean,
                                                                                     self.data.std, device=self.device)[0]
        if self.latency is not None:
            ref_ms, cur_ms = self.latency.measure_pair(model)
            result.latency.update(final_unpruned_ms=ref_ms, final_ms=cur_ms, final_speedup=ref_ms / cur_ms)
