"""One-shot pruning: score once on calibration images, remove channels to a FLOPs target in one step,
optionally compensate the removed channels in their twins (QSFM, arXiv 2105.06052) and fine-tune.

    acc₀ = accuracy(model)
    scores = criterion.score(calibration images)               (any registered criterion)
    plan = fewest lowest-scoring blocks with MACs ≤ (1 − target) · MACs₀   (global ranking, round_to, floors)
    if compensate and the criterion provides twins: fold each removed channel into its twin
    remove the channels (DepGraph surgery)
    optionally (recalibrate_bn) re-estimate BatchNorm running statistics on the calibration images
    acc₁ = accuracy(model)
    if finetune_epochs > 0: fine-tune; acc₂ = accuracy(model)

Criteria that collect training statistics (``ccpcsa``, ``corr``, ``attention``) get them from forward
passes over the same calibration images in eval mode (no training epoch in one-shot mode).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .. import placement
from ..criteria import Criterion, ScoreContext, get_criterion
from ..criteria.stats import stats_collector
from ..data import DataSplits
from ..models.complexity import Complexity, count_complexity
from ..surgery.compensation import CompensationReport, skipped_report
from ..surgery.cost import MacsCost
from ..surgery.macs_target import prune_to_target
from ..surgery.prune import ChannelPruner, channels_per_layer
from ..training.engine import TrainConfig, evaluate, fit, recalibrate_batchnorm
from .allocation import order_blocks
from .loop import calibration_batches


@dataclass
class OneShotResult:
    """The pruned model and what happened to it. Accuracies are top-1 %, NaN for an empty split."""

    model: nn.Module
    criterion: str
    base: Complexity
    final: Complexity
    plan: dict[str, list[int]]
    compensation: CompensationReport | None
    val_before: float
    test_before: float
    val_pruned: float
    test_pruned: float
    val_final: float
    test_final: float
    finetune_epochs: int = 0
    scoring_seconds: float = 0.0
    seconds: float = 0.0
    channels: dict[str, int] = field(default_factory=dict)

    @property
    def flops_reduction(self) -> float:
        """1 − MACs_final / MACs_base."""
        return self.final.reduction_vs(self.base)[0]

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no model)."""
        fr, pr = self.final.reduction_vs(self.base)
        return {"criterion": self.criterion, "base": asdict(self.base), "final": asdict(self.final), "flops_reduction": fr,
                "params_reduction": pr, "channels_removed": sum(len(v) for v in self.plan.values()),
                "val_before": self.val_before, "test_before": self.test_before, "val_pruned": self.val_pruned,
                "test_pruned": self.test_pruned, "val_final": self.val_final, "test_final": self.test_final,
                "finetune_epochs": self.finetune_epochs, "scoring_seconds": self.scoring_seconds, "seconds": self.seconds,
                "compensation": self.compensation.summary() if self.compensation is not None else None}


@torch.no_grad()
def _accuracy(model: nn.Module, data: DataSplits, split: str, device: torch.device) -> float:
    ds = getattr(data, split)
    return evaluate(model, ds, data.mean, data.std, device=device)[0] if len(ds) else float("nan")


def prune_oneshot(model: nn.Module, data: DataSplits, criterion_name: str | Criterion, target_flops_reduction: float, *,
                  input_size: int = 32, compensate: bool = True, calibration_images: int = 256, round_to: int = 8,
                  min_channels: int = 8, max_layer_ratio: float = 0.9, finetune_epochs: int = 0,
                  train_cfg: TrainConfig | None = None, device: torch.device | str | None = None, seed: int = 0,
                  batch_size: int = 64, evaluate_splits: bool = True, recalibrate_bn: bool = False,
                  allocation: str = "global", scope: str = "all") -> OneShotResult:
    """Prune ``model`` (in place) by ``target_flops_reduction`` of its MACs in one step (see module docstring).

    ``criterion_name``: a registered criterion name or a :class:`Criterion` instance. Compensation is applied
    only with ``compensate=True`` and a criterion that provides twin pairs (``removal_pairs``/``compensate``,
    i.e. QSFM); otherwise every pruned group is reported as skipped. ``finetune_epochs > 0`` fine-tunes with
    ``train_cfg`` (default: SGD lr 0.01, cosine, no warm-up). ``evaluate_splits=False`` skips the accuracy
    measurements (NaN). ``recalibrate_bn=True`` re-estimates BatchNorm statistics on the calibration images after
    the surgery (:func:`recalibrate_batchnorm`; no weights change, off by default). ``device``: where to run (the
    model is moved there, float32); None = where the model already is. Returns an :class:`OneShotResult`.
    """
    if not 0 <= target_flops_reduction < 1:
        raise ValueError(f"target_flops_reduction must be in [0, 1), got {target_flops_reduction}")
    t0 = time.perf_counter()
    placement.place(model, device).eval()
    device = placement.module_device(model)
    criterion = get_criterion(criterion_name) if isinstance(criterion_name, str) else criterion_name
    nan = float("nan")
    val0 = _accuracy(model, data, "val", device) if evaluate_splits else nan
    test0 = _accuracy(model, data, "test", device) if evaluate_splits else nan
    base = count_complexity(model, input_size)
    pruner = ChannelPruner(model, input_size, round_to, min_channels, max_layer_ratio, scope=scope)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return calibration_batches(data, calibration_images, batch_size, device, seed)

    stats = None
    if criterion.collects_training_stats:
        with stats_collector(model, pruner, criterion.features, training_only=False,
                             consumers=criterion.wants_consumer_moments) as col, torch.no_grad():
            for x, _ in batches():
                model(placement.inputs_for(model, x))
        stats = col.stats
    ts = time.perf_counter()
    scores = criterion.score(ScoreContext(model, pruner, stats, batches, seed=seed))
    scoring_seconds = time.perf_counter() - ts
    model.eval()
    report: list[CompensationReport] = []

    def before_apply(plan: dict[str, list[int]]) -> None:
        if not compensate:
            report.append(skipped_report(plan, "compensation disabled"))
        elif hasattr(criterion, "compensate"):
            report.append(criterion.compensate(pruner, plan))
        else:
            report.append(skipped_report(plan, f"criterion '{criterion.name}' provides no twin pairs"))

    order = order_blocks(pruner, scores, allocation, MacsCost(pruner) if allocation == "cost" else None)
    plan, final = prune_to_target(pruner, scores, target_macs=base.macs * (1 - target_flops_reduction), ranked=order,
                                  before_apply=before_apply)
    if recalibrate_bn:
        recalibrate_batchnorm(model, batches)
    val1 = _accuracy(model, data, "val", device) if evaluate_splits else nan
    test1 = _accuracy(model, data, "test", device) if evaluate_splits else nan
    val2, test2 = val1, test1
    if finetune_epochs > 0:
        cfg = replace(train_cfg, epochs=finetune_epochs) if train_cfg is not None else TrainConfig(
            epochs=finetune_epochs, lr=0.01, schedule="cosine", warmup_epochs=0.0, seed=seed)
        fit(model, data, cfg, device=device, progress=False, desc="oneshot finetune")
        model.eval()
        val2 = _accuracy(model, data, "val", device) if evaluate_splits else nan
        test2 = _accuracy(model, data, "test", device) if evaluate_splits else nan
    return OneShotResult(model, criterion.name, base, final, plan, report[0] if report else None, val0, test0, val1, test1,
                         val2, test2, finetune_epochs, scoring_seconds, time.perf_counter() - t0, channels_per_layer(model))
