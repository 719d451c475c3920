"""The pruning loop's settings (``prune.*``): :class:`PruneConfig` and the choices its keys take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError, unknown
from ..surgery.alignment import MEASURABLE, resolve_alignment
from ..surgery.prune import SCOPES
from .allocation import ALLOCATIONS, NEEDS_LATENCY

#: ``ccpcsa``: this product's pruner (criterion scores, allocation, aligned blocks); ``torch-pruning``: the library's
#: ``MetaPruner`` with its magnitude importance, run as an external reference under the same schedule.
PRUNERS = ("ccpcsa", "torch-pruning")
#: ``restart``: every fit of the loop (statistics epoch, fine-tune, final fine-tune) decays its own cosine from
#: ``prune.lr`` to 0; ``continuous``: ``prune.lr`` is held through the pruning iterations and one cosine decays it
#: over the final fine-tune.
LR_SCHEDULES = ("restart", "continuous")
#: the distillation teacher: ``start`` — the model the loop starts from (BAM attached and retrained, when the
#: attention stage ran); ``baseline`` — the user's unpruned model as given, without BAM (the pipeline passes it).
TEACHERS = ("start", "baseline")


@dataclass
class PruneConfig:
    """Loop settings (``prune.*``). ``groups_per_iteration`` (m) prunes a fixed number of blocks per iteration;
    otherwise each iteration removes ``step_flops_reduction`` of the original MACs (of the unpruned latency for a
    latency target).

    ``method`` + ``criterion_options``: the criterion; ``round_to`` (``auto`` or a number) + ``target_runtime``: the
    width alignment (:mod:`ccpcsa.surgery.alignment`); ``round_to_wide``: a coarser alignment for layers at least twice
    as wide (:meth:`ChannelPruner.unit`; 16: the x86 INT8 kernels' output-channel block); ``allocation``: the block order (:mod:`ccpcsa.pruning.allocation`); ``scope``:
    ``internal`` leaves residual streams whole; ``target_speedup`` / ``target_latency_ms`` at ``latency_batch``: a
    measured-latency target instead of ``target_flops_reduction``; ``pruner``: ``torch-pruning`` runs the library's
    ``MetaPruner`` instead (the benchmark's external reference); ``compensate``: apply the criterion's own weight
    compensation before each surgery; ``distill`` (``distill_weight`` α, ``distill_temperature`` T): knowledge
    distillation from the unpruned model in every fine-tune; ``seed``: None = the pipeline's ``run.seed``;
    ``by_alignment``: settings for one resolved alignment (:mod:`ccpcsa.pruning.operating_point`; the pipeline's prune
    stage applies them before it builds the latency probe and gates, :func:`run_pruning` applies them to a config that
    still holds them); ``drop_blocks``: residual blocks removed whole before the first iteration
    (:mod:`ccpcsa.models.depth`; their MACs count toward the target, the unpruned model stays the latency reference
    and the default teacher)."""

    method: str = "ccpcsa"
    target_flops_reduction: float = 0.4
    target_params_reduction: float | None = None
    tolerance: float = 0.5
    max_iterations: int = 10
    groups_per_iteration: int | None = None
    step_flops_reduction: float = 0.1
    round_to: int | str = "auto"
    round_to_wide: int | None = None
    target_runtime: str = "onnxruntime-cpu"
    allocation: str = "global"
    target_speedup: float | None = None
    target_latency_ms: float | None = None
    latency_batch: int = 1
    pruner: str = "ccpcsa"
    scope: str = "all"
    compensate: bool = True
    min_channels: int = 8
    max_layer_ratio: float = 0.9
    finetune_epochs: int = 1
    final_finetune_epochs: int = 2
    lr: float = 0.01
    criterion_options: dict[str, Any] = field(default_factory=dict)
    calibration_images: int = 256
    remove_attention: bool = False
    distill: bool = False
    distill_weight: float = 0.7
    distill_temperature: float = 4.0
    lr_schedule: str = "restart"
    distill_teacher: str = "start"
    recalibrate_bn: int = 0
    sensitivity_images: int = 512
    seed: int | None = None  # None: 0 (the pipeline passes run.seed)
    by_alignment: dict[int, dict[str, Any]] = field(default_factory=dict)
    drop_blocks: list[str] = field(default_factory=list)

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
        resolve_alignment(self.round_to, self.target_runtime)  # 'auto' or an integer ≥ 1, a known runtime
        if self.by_alignment:
            from .operating_point import check_by_alignment

            check_by_alignment(self)
        if self.round_to_wide is not None and (isinstance(self.round_to_wide, bool) or not isinstance(self.round_to_wide, int)
                                               or self.round_to_wide < 1):
            raise UserError(f"prune.round_to_wide must be an integer ≥ 1 (e.g. 16) or null, got {self.round_to_wide!r}")
        if self.min_channels < 1:
            raise UserError(f"prune.min_channels must be ≥ 1, got {self.min_channels}")
        if self.allocation not in ALLOCATIONS:
            raise unknown("prune.allocation", self.allocation, ALLOCATIONS)
        if self.target_speedup is not None and not 1 < self.target_speedup < float("inf"):
            raise UserError(f"prune.target_speedup must be a number > 1 (e.g. 2.0) or null, got {self.target_speedup}")
        if self.target_latency_ms is not None and not 0 < self.target_latency_ms < float("inf"):
            raise UserError(f"prune.target_latency_ms must be a number > 0 or null, got {self.target_latency_ms}")
        if self.target_speedup is not None and self.target_latency_ms is not None:
            raise UserError("set prune.target_speedup or prune.target_latency_ms, not both")
        if self.scope not in SCOPES:
            raise unknown("prune.scope", self.scope, SCOPES)
        if self.pruner not in PRUNERS:
            raise unknown("prune.pruner", self.pruner, PRUNERS)
        if self.pruner == "torch-pruning" and (self.target_speedup is not None or self.target_latency_ms is not None
                                                or self.groups_per_iteration is not None or self.allocation != "global"
                                                or self.scope != "all" or self.round_to_wide is not None):
            raise UserError("prune.pruner=torch-pruning (the reference MetaPruner, its own global ranking) takes a FLOPs "
                            "target only; unset prune.target_speedup / target_latency_ms / groups_per_iteration / "
                            "round_to_wide and keep prune.allocation=global, prune.scope=all")
        if (self.target_speedup is not None or self.target_latency_ms is not None or self.allocation in NEEDS_LATENCY) \
                and self.target_runtime not in MEASURABLE:
            raise UserError(f"prune.target_speedup / target_latency_ms / allocation=latency are measured on the target "
                            f"runtime, and this pipeline measures {', '.join(MEASURABLE)} (prune.target_runtime is "
                            f"{self.target_runtime}); set target.profile (a built-in runtime or the device's target.json) "
                            "or use prune.target_flops_reduction")
        if self.latency_batch < 1:
            raise UserError(f"prune.latency_batch must be ≥ 1, got {self.latency_batch}")
        if not 0 <= self.max_layer_ratio < 1:
            raise UserError(f"prune.max_layer_ratio must be in [0, 1), got {self.max_layer_ratio}")
        if self.finetune_epochs < 0 or self.final_finetune_epochs < 0:
            raise UserError(f"prune.finetune_epochs and prune.final_finetune_epochs must be ≥ 0, "
                            f"got {self.finetune_epochs}, {self.final_finetune_epochs}")
        if not 0 < self.lr < float("inf"):  # also rejects NaN
            raise UserError(f"prune.lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.distill_weight <= 1:
            raise UserError(f"prune.distill_weight must be in [0, 1] (share of the distillation term), got {self.distill_weight}")
        if not 0 < self.distill_temperature < float("inf"):
            raise UserError(f"prune.distill_temperature must be a number > 0, got {self.distill_temperature}")
        if self.seed is not None and self.seed < 0:
            raise UserError(f"prune.seed must be ≥ 0 or null (run.seed), got {self.seed}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise unknown("prune.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.distill_teacher not in TEACHERS:
            raise unknown("prune.distill_teacher", self.distill_teacher, TEACHERS)
        if self.recalibrate_bn < 0:
            raise UserError(f"prune.recalibrate_bn must be ≥ 0 (train images; 0 = off), got {self.recalibrate_bn}")
        if self.sensitivity_images < 1:
            raise UserError(f"prune.sensitivity_images must be ≥ 1, got {self.sensitivity_images}")
        if self.calibration_images < 1:
            raise UserError(f"prune.calibration_images must be ≥ 1, got {self.calibration_images}")
        if not isinstance(self.drop_blocks, list) or not all(isinstance(b, str) and b for b in self.drop_blocks):
            raise UserError(f"prune.drop_blocks must be a list of module names (e.g. [layer1.1]) or [], got {self.drop_blocks!r}")
