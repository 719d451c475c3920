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
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .artifacts import atomic_write_json
from .attention import detach_bam
from .criteria import Criterion, ScoreContext, feature_members
from .criteria.stats import ChannelStatsCollector
from .data import ArrayDataset, BatchLoader, DataSplits
from .errors import UserError
from .models.complexity import Complexity, count_complexity
from .prune import ChannelPruner, channels_per_layer, prune_to_target
from .train import TrainConfig, evaluate, fit


@dataclass
class PruneConfig:
    """Loop settings. ``groups_per_iteration`` (m) prunes a fixed number of blocks per iteration;
    otherwise each iteration removes ``step_flops_reduction`` of the original MACs."""

    method: str = "ccpcsa"
    target_flops_reduction: float = 0.4
    target_params_reduction: float | None = None
    tolerance: float = 0.5
    max_iterations: int = 10
    groups_per_iteration: int | None = None
    step_flops_reduction: float = 0.1
    round_to: int = 8
    min_channels: int = 8
    max_layer_ratio: float = 0.9
    finetune_epochs: int = 1
    final_finetune_epochs: int = 2
    lr: float = 0.01
    calibration_images: int = 256
    remove_attention: bool = False
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`UserError` for values the loop cannot honour."""
        if not 0 <= self.target_flops_reduction < 1:
            raise UserError(f"prune.target_flops_reduction must be in [0, 1), got {self.target_flops_reduction}")
        if self.target_params_reduction is not None and not 0 <= self.target_params_reduction < 1:
            raise UserError(f"prune.target_params_reduction must be in [0, 1) or null, got {self.target_params_reduction}")
        if not self.tolerance >= 0:  # also rejects NaN
            raise UserError(f"prune.tolerance must be ≥ 0 (percentage points), got {self.tolerance}")
        if self.max_iterations < 0:
            raise UserError(f"prune.max_iterations must be ≥ 0, got {self.max_iterations}")
        if self.groups_per_iteration is not None and self.groups_per_iteration < 1:
            raise UserError(f"prune.groups_per_iteration must be ≥ 1 or null, got {self.groups_per_iteration}")
        if not 0 < self.step_flops_reduction < 1:
            raise UserError(f"prune.step_flops_reduction must be in (0, 1), got {self.step_flops_reduction}")
        if self.round_to < 1 or self.min_channels < 1:
            raise UserError(f"prune.round_to and prune.min_channels must be ≥ 1, got {self.round_to}, {self.min_channels}")
        if not 0 <= self.max_layer_ratio < 1:
            raise UserError(f"prune.max_layer_ratio must be in [0, 1), got {self.max_layer_ratio}")
        if self.finetune_epochs < 0 or self.final_finetune_epochs < 0:
            raise UserError(f"prune.finetune_epochs and prune.final_finetune_epochs must be ≥ 0, "
                            f"got {self.finetune_epochs}, {self.final_finetune_epochs}")
        if not 0 < self.lr < float("inf"):  # also rejects NaN
            raise UserError(f"prune.lr must be a finite number > 0, got {self.lr}")
        if self.calibration_images < 1:
            raise UserError(f"prune.calibration_images must be ≥ 1, got {self.calibration_images}")


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

    def summary(self) -> dict[str, Any]:
        assert self.base is not None and self.final is not None
        fr, pr = self.final.reduction_vs(self.base)
        return {"iterations": self.iterations, "stop_reason": self.stop_reason, "reference_val_accuracy": self.reference_accuracy,
                "final_val_accuracy": self.final_val_accuracy, "base": asdict(self.base), "final": asdict(self.final),
                "flops_reduction": fr, "params_reduction": pr, "seconds": self.seconds}


def calibration_batches(data: DataSplits, n_images: int, batch_size: int, device: torch.device | str,
                        seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_images`` of a seeded permutation of the train split, normalized, no augmentation."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=g)[:n_images].numpy()
    sub = ArrayDataset(data.train.images[idx], data.train.labels[idx])
    yield from BatchLoader(sub, batch_size, data.mean, data.std, device=device)


def run_pruning(model: nn.Module, data: DataSplits, criterion: Criterion, cfg: PruneConfig, train_cfg: TrainConfig, *,
                input_size: int = 32, device: torch.device | str = "cpu", reference_accuracy: float | None = None,
                history_path: str | Path | None = None, progress: bool = True) -> PruneResult:
    """Run Algorithm 1 on ``model`` (modified in place) and return the last accepted model.

    ``train_cfg`` supplies batch size, augmentation and ``max_steps_per_epoch``; its epochs/lr/schedule
    are replaced by the loop's (one epoch per iteration at ``cfg.lr``, cosine within a fine-tune).
    The history (JSON list, one row per iteration) is written atomically after every iteration.
    """
    cfg.validate()
    t0 = time.perf_counter()
    device = torch.device(device)
    model.to(device)
    ft = replace(train_cfg, lr=cfg.lr, schedule="cosine", warmup_epochs=0.0, seed=cfg.seed)
    ref = reference_accuracy if reference_accuracy is not None else evaluate(model, data.val, data.mean, data.std, device=device)[0]
    base = count_complexity(model, input_size)
    target_macs = base.macs * (1 - cfg.target_flops_reduction)
    target_params = base.params * (1 - cfg.target_params_reduction) if cfg.target_params_reduction is not None else None
    result = PruneResult(model=model, base=base, reference_accuracy=ref)
    pruner = ChannelPruner(model, input_size, cfg.round_to, cfg.min_channels, cfg.max_layer_ratio)
    original_sizes = pruner.original_sizes
    accepted = copy.deepcopy(model)
    current = base

    def reached(c: Complexity) -> bool:
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
            pruner = ChannelPruner(model, input_size, cfg.round_to, cfg.min_channels, cfg.max_layer_ratio, original_sizes)
            feats = sorted({n for g in pruner.groups for n in feature_members(g, model)})
            with ChannelStatsCollector(model, feats) as col:
                fit(model, data, replace(ft, epochs=1), device=device, progress=progress, desc=f"prune it{it} stats")
            stats = col.stats
        else:
            fit(model, data, replace(ft, epochs=1), device=device, progress=progress, desc=f"prune it{it} train")
        # 2) score all groups, sort globally, prune the lowest blocks
        pruner = ChannelPruner(model, input_size, cfg.round_to, cfg.min_channels, cfg.max_layer_ratio, original_sizes)
        ctx = ScoreContext(model, pruner, stats,
                           lambda: calibration_batches(data, cfg.calibration_images, train_cfg.batch_size, device, cfg.seed),
                           seed=cfg.seed + it)
        model.eval()
        scores = criterion.score(ctx)
        if cfg.groups_per_iteration is not None:
            plan, new = prune_to_target(pruner, scores, blocks=cfg.groups_per_iteration)
        else:
            goal = max(target_macs, base.macs * (1 - cfg.step_flops_reduction * it), 0)
            plan, new = prune_to_target(pruner, scores, target_macs=min(goal, current.macs - 1))
        removed = sum(len(v) for v in plan.values())
        if removed == 0:
            stop = "nothing left to prune (per-layer floors reached)"
            break
        # 3) fine-tune, measure, guard
        if cfg.finetune_epochs > 0:
            fit(model, data, replace(ft, epochs=cfg.finetune_epochs), device=device, progress=progress, desc=f"prune it{it} finetune")
        acc = evaluate(model, data.val, data.mean, data.std, device=device)[0]
        drop = ref - acc
        ok = drop < cfg.tolerance
        fr, pr = new.reduction_vs(base)
        row = {"iteration": it, "macs": new.macs, "params": new.params, "flops_reduction": fr, "params_reduction": pr,
               "val_accuracy": acc, "drop_pp": drop, "accepted": ok, "channels_removed": removed,
               "channels": channels_per_layer(model), "seconds": time.perf_counter() - ti}
        result.history.append(row)
        if history_path is not None:
            atomic_write_json(history_path, result.history)
        bar.update(1)
        bar.set_postfix(flops=f"-{100 * fr:.1f}%", acc=f"{acc:.2f}", drop=f"{drop:+.2f}pp", ok=ok)
        if progress:
            tqdm.write(f"prune iteration {it}: FLOPs -{100 * fr:.1f}% params -{100 * pr:.1f}% val {acc:.2f}% "
                       f"(drop {drop:+.2f} pp) {'accepted' if ok else 'REJECTED → restoring last accepted model'}")
        if not ok:
            model = copy.deepcopy(accepted)
            stop = f"accuracy drop {drop:.2f} pp ≥ tolerance {cfg.tolerance} pp"
            break
        accepted = copy.deepcopy(model)
        current = new
        result.iterations = it
    else:
        if reached(current):
            stop = "target reached"
    bar.close()
    detached = detach_bam(model) if cfg.remove_attention else 0
    # Fine-tune after pruning — and always after removing BAM, whose gates the network had learned to rely on.
    if cfg.final_finetune_epochs > 0 and (result.iterations > 0 or detached > 0):
        fit(model, data, replace(ft, epochs=cfg.final_finetune_epochs), device=device, progress=progress, desc="prune final finetune")
    result.model = model
    result.final = count_complexity(model, input_size)
    result.final_val_accuracy = evaluate(model, data.val, data.mean, data.std, device=device)[0]
    result.stop_reason = stop
    result.seconds = time.perf_counter() - t0
    if history_path is not None:
        atomic_write_json(history_path, result.history)
    return result
