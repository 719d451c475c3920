"""The pruning loop's settings (``prune.*``): :class:`PruneConfig`, its typed sections and the choices their keys take.

``prune`` has seven entries, each a section that answers one question of Algorithm 1 (Zhao et al., *Electronics*
2023, 12(7):1683): ``criterion`` (how channels are scored), ``target`` (when to stop), ``steps`` (how much each
iteration removes and in what order), ``widths`` (which widths are allowed), ``recovery`` (how accuracy comes back:
fine-tune, distillation, BatchNorm recalibration), ``depth`` (blocks removed whole) and ``by_alignment`` (the
operating point of each channel block, :mod:`ccpcsa.pruning.operating_point`). The flat keys of earlier versions
(``prune.target_flops_reduction`` …) are read through :data:`LEGACY_KEYS` with a one-line hint naming the new key.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError, closest, unknown
from ..surgery.alignment import MEASURABLE, resolve_alignment
from ..surgery.prune import SCOPES
from .allocation import ALLOCATIONS, NEEDS_LATENCY
from .depth_choice import PRICES

#: ``ccpcsa``: this product's pruner (criterion scores, allocation, aligned blocks); ``torch-pruning``: the library's
#: ``MetaPruner`` with its magnitude importance, run as an external reference under the same schedule.
PRUNERS = ("ccpcsa", "torch-pruning")
#: ``restart``: every fit of the loop (statistics epoch, fine-tune, final fine-tune) decays its own cosine from
#: ``prune.recovery.lr`` to 0; ``continuous``: the rate is held through the pruning iterations and one cosine decays
#: it over the final fine-tune.
LR_SCHEDULES = ("restart", "continuous")
#: the distillation teacher: ``start`` — the model the loop starts from (BAM attached and retrained, when the
#: attention stage ran); ``baseline`` — the user's unpruned model as given, without BAM (the pipeline passes it).
TEACHERS = ("start", "baseline")


def _need(ok: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``ok``."""
    if not ok:
        raise UserError(message)


def _finite(x: float, lo: float, hi: float = float("inf")) -> bool:
    """``lo < x < hi`` (False for NaN)."""
    return lo < x < hi


@dataclass
class CriterionSettings:
    """``prune.criterion``: ``name`` — the registered criterion (:mod:`ccpcsa.criteria`); ``options`` — its keyword
    options; ``compensate`` — apply the criterion's own weight compensation before each surgery;
    ``calibration_images`` — train images the criterion's statistics see per scoring pass."""

    name: str = "ccpcsa"
    options: dict[str, Any] = field(default_factory=dict)
    compensate: bool = True
    calibration_images: int = 256

    def validate(self) -> None:
        """Raise :class:`UserError` for values the loop cannot honour."""
        _need(self.calibration_images >= 1, f"prune.criterion.calibration_images must be ≥ 1, got {self.calibration_images}")


@dataclass
class TargetSettings:
    """``prune.target``: stop when the deployed graph lost ``flops_reduction`` of its MACs (and ``params_reduction`` of
    its parameters, when set) — or, with ``speedup`` / ``latency_ms``, when the latency at ``latency_batch`` on
    ``runtime`` reaches it (the pipeline sets ``runtime`` from ``target.profile``)."""

    flops_reduction: float = 0.4
    params_reduction: float | None = None
    speedup: float | None = None
    latency_ms: float | None = None
    latency_batch: int = 1
    runtime: str = "onnxruntime-cpu"

    @property
    def on_latency(self) -> bool:
        """A latency goal (``speedup`` or ``latency_ms``) instead of a MACs one."""
        return self.speedup is not None or self.latency_ms is not None

    def validate(self) -> None:
        """Raise :class:`UserError` for values the loop cannot honour."""
        _need(0 <= self.flops_reduction < 1, f"prune.target.flops_reduction must be in [0, 1), got {self.flops_reduction}")
        _need(self.params_reduction is None or 0 <= self.params_reduction < 1,
              f"prune.target.params_reduction must be in [0, 1) or null, got {self.params_reduction}")
        _need(self.speedup is None or _finite(self.speedup, 1),
              f"prune.target.speedup must be a number > 1 (e.g. 2.0) or null, got {self.speedup}")
        _need(self.latency_ms is None or _finite(self.latency_ms, 0),
              f"prune.target.latency_ms must be a number > 0 or null, got {self.latency_ms}")
        _need(self.speedup is None or self.latency_ms is None, "set prune.target.speedup or prune.target.latency_ms, not both")
        _need(self.latency_batch >= 1, f"prune.target.latency_batch must be ≥ 1, got {self.latency_batch}")


@dataclass
class StepSettings:
    """``prune.steps``: ``pruner`` — ``ccpcsa`` or ``torch-pruning`` (the library's ``MetaPruner``, the benchmark's
    external reference); ``allocation`` — the block order (:mod:`ccpcsa.pruning.allocation`); each iteration removes
    ``groups_per_iteration`` blocks when set, else ``flops_reduction`` of the original MACs (of the unpruned latency for
    a latency target), at most ``max_iterations`` times; the guard stops when validation accuracy falls more than
    ``tolerance`` pp under the reference; ``sensitivity_images`` — images per block for the sensitivity allocations;
    ``seed`` — None = the pipeline's ``run.seed``."""

    pruner: str = "ccpcsa"
    allocation: str = "global"
    max_iterations: int = 10
    groups_per_iteration: int | None = None
    flops_reduction: float = 0.1
    tolerance: float = 0.5
    sensitivity_images: int = 512
    seed: int | None = None

    def validate(self) -> None:
        """Raise :class:`UserError` for values the loop cannot honour."""
        if self.pruner not in PRUNERS:
            raise unknown("prune.steps.pruner", self.pruner, PRUNERS)
        if self.allocation not in ALLOCATIONS:
            raise unknown("prune.steps.allocation", self.allocation, ALLOCATIONS)
        _need(self.max_iterations >= 0, f"prune.steps.max_iterations must be ≥ 0, got {self.max_iterations}")
        _need(self.groups_per_iteration is None or self.groups_per_iteration >= 1,
              f"prune.steps.groups_per_iteration must be ≥ 1 or null, got {self.groups_per_iteration}")
        _need(0 < self.flops_reduction < 1, f"prune.steps.flops_reduction must be in (0, 1), got {self.flops_reduction}")
        _need(self.tolerance >= 0, f"prune.steps.tolerance must be ≥ 0 (percentage points), got {self.tolerance}")
        _need(self.sensitivity_images >= 1, f"prune.steps.sensitivity_images must be ≥ 1, got {self.sensitivity_images}")
        _need(self.seed is None or self.seed >= 0, f"prune.steps.seed must be ≥ 0 or null (run.seed), got {self.seed}")


@dataclass
class WidthSettings:
    """``prune.widths``: ``round_to`` (``auto`` or a number) — the width alignment on ``prune.target.runtime``
    (:mod:`ccpcsa.surgery.alignment`); ``round_to_wide`` — a coarser alignment for layers at least twice as wide
    (:meth:`ChannelPruner.unit`; 16: the x86 INT8 kernels' output-channel block); ``min_channels`` / ``max_layer_ratio``
    — the floor of every layer; ``scope`` — ``internal`` leaves residual streams whole."""

    round_to: int | str = "auto"
    round_to_wide: int | None = None
    min_channels: int = 8
    max_layer_ratio: float = 0.9
    scope: str = "all"

    def validate(self) -> None:
        """Raise :class:`UserError` for values the loop cannot honour (``round_to`` is checked with the runtime)."""
        wide = self.round_to_wide
        _need(wide is None or (isinstance(wide, int) and not isinstance(wide, bool) and wide >= 1),
              f"prune.widths.round_to_wide must be an integer ≥ 1 (e.g. 16) or null, got {wide!r}")
        _need(self.min_channels >= 1, f"prune.widths.min_channels must be ≥ 1, got {self.min_channels}")
        _need(0 <= self.max_layer_ratio < 1, f"prune.widths.max_layer_ratio must be in [0, 1), got {self.max_layer_ratio}")
        if self.scope not in SCOPES:
            raise unknown("prune.widths.scope", self.scope, SCOPES)


@dataclass
class DistillSettings:
    """``prune.recovery.distill``: knowledge distillation in every fine-tune when ``enabled`` — loss
    ``(1 − α)·CE + α·T²·KL(teacher_T ‖ student_T)`` with α = ``weight``, T = ``temperature`` (Hinton et al. 2015) and
    the ``teacher`` of :data:`TEACHERS`; ``views`` — 0: the teacher runs on every training batch; ``K ≥ 1``: its logits
    are computed once for ``K`` fixed augmented views of every training image and the fine-tunes train on those views
    (:mod:`ccpcsa.training.teacher_views`, FKD); ``features`` — weight β of a stage-output term ``β·L_feat`` added to
    the loss (:mod:`ccpcsa.training.feature_distill`, FitNets; 0 = off; needs the teacher online, ``views: 0``)."""

    enabled: bool = False
    weight: float = 0.7
    temperature: float = 4.0
    teacher: str = "start"
    views: int = 0
    features: float = 0.0

    def validate(self) -> None:
        """Raise :class:`UserError` for values the loop cannot honour."""
        _need(0 <= self.weight <= 1, f"prune.recovery.distill.weight must be in [0, 1] (share of the distillation term), "
                                     f"got {self.weight}")
        _need(_finite(self.temperature, 0), f"prune.recovery.distill.temperature must be a number > 0, got {self.temperature}")
        if self.teacher not in TEACHERS:
            raise unknown("prune.recovery.distill.teacher", self.teacher, TEACHERS)
        _need(isinstance(self.views, int) and not isinstance(self.views, bool) and self.views >= 0,
              f"prune.recovery.distill.views must be an integer ≥ 0 (cached augmented views per training image; 0 = the "
              f"teacher runs on every batch), got {self.views!r}")
        _need(isinstance(self.features, (int, float)) and not isinstance(self.features, bool) and 0 <= self.features < 1e6,
              f"prune.recovery.distill.features must be a number ≥ 0 (weight of the stage-output term; 0 = off), "
              f"got {self.features!r}")
        _need(not (self.features > 0 and self.views > 0),
              "prune.recovery.distill.features needs the teacher's forward on every batch, which cached views skip: "
              "set prune.recovery.distill.views=0 or prune.recovery.distill.features=0")


@dataclass
class RecoverySettings:
    """``prune.recovery``: ``finetune_epochs`` after each iteration and ``final_finetune_epochs`` at the end, at ``lr``
    under ``lr_schedule`` (:data:`LR_SCHEDULES`); ``recalibrate_bn`` — train images that re-estimate BatchNorm statistics
    after every surgery (0 = off); ``remove_attention`` — drop BAM before the final fine-tune (a plain deployed graph);
    ``distill`` — :class:`DistillSettings`."""

    finetune_epochs: int = 1
    final_finetune_epochs: int = 2
    lr: float = 0.01
    lr_schedule: str = "restart"
    recalibrate_bn: int = 0
    remove_attention: bool = False
    distill: DistillSettings = field(default_factory=DistillSettings)

    def validate(self) -> None:
        """Raise :class:`UserError` for values the loop cannot honour."""
        _need(self.finetune_epochs >= 0 and self.final_finetune_epochs >= 0,
              f"prune.recovery.finetune_epochs and prune.recovery.final_finetune_epochs must be ≥ 0, "
              f"got {self.finetune_epochs}, {self.final_finetune_epochs}")
        _need(_finite(self.lr, 0), f"prune.recovery.lr must be a finite number > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise unknown("prune.recovery.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _need(self.recalibrate_bn >= 0, f"prune.recovery.recalibrate_bn must be ≥ 0 (train images; 0 = off), "
                                        f"got {self.recalibrate_bn}")
        self.distill.validate()


@dataclass
class DepthSettings:
    """``prune.depth``: ``drop_blocks`` — residual blocks removed whole before the first iteration
    (:mod:`ccpcsa.models.depth`; their MACs count toward the target, the unpruned model stays the latency reference and
    the default teacher), or ``auto``: chosen on the model jointly with the widths, at the run's target and on its CPU's
    channel block (:mod:`ccpcsa.pruning.depth_choice`), trying up to ``max_blocks`` of them in the overall price order
    (and the k cheapest of every stage) and scoring each probe on ``probe_images`` val images (a seeded sample, the same
    for every probe; None = the whole val split). ``min_speedup`` (``auto`` only): the probes are also timed end to end
    on the target in FP32 and INT8 at ``export.latency_batches`` (:mod:`export.speed_check`), and one not faster than
    this over the unpruned model by one standard error, at any of them, does not compete (None: no floor). ``price``
    (``auto`` only): what a block's one-shot accuracy drop is divided by to order the blocks — ``macs``, the MACs it
    removes, or ``time``, the time it removes on the target, timed there as the floor is
    (:func:`ccpcsa.pruning.depth_choice.time_shares`)."""

    drop_blocks: list[str] | str = field(default_factory=list)
    max_blocks: int = 8
    probe_images: int | None = 2000
    min_speedup: float | None = None
    price: str = "macs"

    @property
    def auto(self) -> bool:
        """The blocks are chosen by :func:`ccpcsa.pruning.depth_choice.choose_blocks`."""
        return self.drop_blocks == "auto"

    def validate(self) -> None:
        """Raise :class:`UserError` for values the loop cannot honour."""
        _need(self.auto or (isinstance(self.drop_blocks, list) and all(isinstance(b, str) and b for b in self.drop_blocks)),
              f"prune.depth.drop_blocks must be a list of module names (e.g. [layer1.1]), [] or auto, got {self.drop_blocks!r}")
        _need(isinstance(self.max_blocks, int) and not isinstance(self.max_blocks, bool) and self.max_blocks >= 1,
              f"prune.depth.max_blocks must be an integer ≥ 1, got {self.max_blocks!r}")
        _need(self.probe_images is None or (isinstance(self.probe_images, int) and self.probe_images >= 100),
              f"prune.depth.probe_images must be an integer ≥ 100 or null (the whole val split), got {self.probe_images!r}")
        _need(self.min_speedup is None or (isinstance(self.min_speedup, (int, float)) and not isinstance(self.min_speedup, bool)
                                           and _finite(self.min_speedup, 1) and self.auto),
              f"prune.depth.min_speedup (the floor of drop_blocks: auto) must be a number > 1 (e.g. 2.5) or null, got "
              f"{self.min_speedup!r} with drop_blocks {self.drop_blocks!r}; with blocks named by hand set it to null")
        if self.price not in PRICES:
            raise unknown("prune.depth.price", self.price, PRICES)

    @property
    def timed(self) -> bool:
        """The search times probes on the target: a floor, or blocks priced by time (``auto`` only)."""
        return self.auto and (self.min_speedup is not None or self.price == "time")

    def timed_keys(self) -> tuple[str, str]:
        """``(the keys that make the search timed, the settings that turn them off)``, each joined by "and", for a
        one-line error."""
        keys = (("prune.depth.min_speedup", "prune.depth.min_speedup=null", self.min_speedup is not None),
                ("prune.depth.price=time", "prune.depth.price=macs", self.price == "time"))
        on = [(k, fix) for k, fix, set_ in keys if set_]
        return " and ".join(k for k, _ in on), " and ".join(f for _, f in on)


@dataclass
class PruneConfig:
    """The loop's settings (``prune.*``; the module docstring names the sections). ``by_alignment`` maps a resolved
    channel block to the dotted keys it sets (``{16: {"target.flops_reduction": 0.4}}``,
    :mod:`ccpcsa.pruning.operating_point`), applied once before the loop builds anything."""

    criterion: CriterionSettings = field(default_factory=CriterionSettings)
    target: TargetSettings = field(default_factory=TargetSettings)
    steps: StepSettings = field(default_factory=StepSettings)
    widths: WidthSettings = field(default_factory=WidthSettings)
    recovery: RecoverySettings = field(default_factory=RecoverySettings)
    depth: DepthSettings = field(default_factory=DepthSettings)
    by_alignment: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, values: dict[str, Any] | None = None, **dotted: Any) -> PruneConfig:
        """A default config with ``values`` and ``dotted`` applied (:meth:`updated`)."""
        return cls().updated({**(values or {}), **dotted})

    def updated(self, values: dict[str, Any]) -> PruneConfig:
        """A deep copy with each dotted key of ``values`` (``"target.flops_reduction"``; ``__`` may stand for the dot
        in keyword form; a flat key of :data:`LEGACY_KEYS` is read as its new key) set; unknown keys: ``UserError``."""
        out = copy.deepcopy(self)
        for key, value in values.items():
            path = dotted_key(key.replace("__", "."))
            *parents, leaf = path.split(".")
            obj: Any = out
            for p in parents:
                obj = getattr(obj, p, None)
            if obj is None or not dataclasses.is_dataclass(obj) or leaf not in {f.name for f in dataclasses.fields(obj)}:
                raise UserError(f"unknown prune key '{key}'; the keys: python -m pipeline keys")
            setattr(obj, leaf, value)
        return out

    def get(self, key: str) -> Any:
        """The value at dotted ``key`` (``"recovery.distill.weight"``)."""
        obj: Any = self
        for p in key.split("."):
            obj = getattr(obj, p)
        return obj

    def legacy_flat(self) -> dict[str, Any]:
        """The settings under the flat keys of :data:`LEGACY_KEYS` (``by_alignment`` entries too) and, where set away
        from their defaults, the keys added since under their dotted names: the stage keys hash this form, so a run
        directory made before the sections existed resumes without re-running its stages."""
        old = {new: flat for flat, new in LEGACY_KEYS.items()}
        flat = {name: copy.deepcopy(self.get(new)) for name, new in LEGACY_KEYS.items()}
        flat["by_alignment"] = {b: {old.get(k, k): v for k, v in s.items()} for b, s in self.by_alignment.items()}
        default = PruneConfig()
        for key in section_keys():  # keys added after the sections: hashed under their dotted name once set
            if key not in old and self.get(key) != default.get(key):
                flat[key] = copy.deepcopy(self.get(key))
        return flat

    def validate(self) -> None:
        """Raise :class:`UserError` for values the loop cannot honour; every section, then the cross-section rules."""
        for section in (self.criterion, self.target, self.steps, self.widths, self.recovery, self.depth):
            section.validate()
        resolve_alignment(self.widths.round_to, self.target.runtime)  # 'auto' or an integer ≥ 1, a known runtime
        if self.by_alignment:
            check_by_alignment(self)
        t, s, w = self.target, self.steps, self.widths
        if s.pruner == "torch-pruning" and (t.on_latency or s.groups_per_iteration is not None or s.allocation != "global"
                                            or w.scope != "all" or w.round_to_wide is not None):
            raise UserError("prune.steps.pruner=torch-pruning (the reference MetaPruner, its own global ranking) takes a "
                            "MACs target only; unset prune.target.speedup / latency_ms, prune.steps.groups_per_iteration, "
                            "prune.widths.round_to_wide and keep prune.steps.allocation=global, prune.widths.scope=all")
        if self.depth.timed and t.runtime not in MEASURABLE:
            keys, fixes = self.depth.timed_keys()
            verb = "are" if " and " in keys else "is"
            raise UserError(f"{keys} {verb} timed on the target runtime, and this pipeline times "
                            f"{', '.join(MEASURABLE)} (prune.target.runtime is {t.runtime}); set target.profile (a "
                            f"built-in runtime or the device's target.json) or set {fixes}")
        if (t.on_latency or s.allocation in NEEDS_LATENCY) and t.runtime not in MEASURABLE:
            raise UserError(f"prune.target.speedup / latency_ms / steps.allocation=latency are timed on the target "
                            f"runtime, and this pipeline times {', '.join(MEASURABLE)} (prune.target.runtime is "
                            f"{t.runtime}); set target.profile (a built-in runtime or the device's target.json) "
                            "or use prune.target.flops_reduction")


#: flat key of earlier versions → its dotted key under ``prune`` (read with a one-line hint)
LEGACY_KEYS: dict[str, str] = {
    "method": "criterion.name", "criterion_options": "criterion.options", "compensate": "criterion.compensate",
    "calibration_images": "criterion.calibration_images",
    "target_flops_reduction": "target.flops_reduction", "target_params_reduction": "target.params_reduction",
    "target_speedup": "target.speedup", "target_latency_ms": "target.latency_ms", "latency_batch": "target.latency_batch",
    "target_runtime": "target.runtime",
    "pruner": "steps.pruner", "allocation": "steps.allocation", "max_iterations": "steps.max_iterations",
    "groups_per_iteration": "steps.groups_per_iteration", "step_flops_reduction": "steps.flops_reduction",
    "tolerance": "steps.tolerance", "sensitivity_images": "steps.sensitivity_images", "seed": "steps.seed",
    "round_to": "widths.round_to", "round_to_wide": "widths.round_to_wide", "min_channels": "widths.min_channels",
    "max_layer_ratio": "widths.max_layer_ratio", "scope": "widths.scope",
    "finetune_epochs": "recovery.finetune_epochs", "final_finetune_epochs": "recovery.final_finetune_epochs",
    "lr": "recovery.lr", "lr_schedule": "recovery.lr_schedule", "recalibrate_bn": "recovery.recalibrate_bn",
    "remove_attention": "recovery.remove_attention", "distill": "recovery.distill.enabled",
    "distill_weight": "recovery.distill.weight", "distill_temperature": "recovery.distill.temperature",
    "distill_teacher": "recovery.distill.teacher", "drop_blocks": "depth.drop_blocks",
}


def dotted_key(key: str) -> str:
    """``key`` under ``prune``, a flat key of :data:`LEGACY_KEYS` read as its new dotted key."""
    return LEGACY_KEYS.get(key, key)


def legacy_hint(key: str) -> str:
    """The one-line hint for a flat key of earlier versions ("" for a current key)."""
    new = LEGACY_KEYS.get(key)
    return f"note: prune.{key} is now prune.{new} (read as that; the old key goes in a later version)" if new else ""


def nest_legacy(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(data with every flat key of LEGACY_KEYS moved into its section, one hint per moved key)`` for the ``prune``
    mapping of a YAML file or a ``--set``; a current key is left as it is. A section given as a non-mapping next to an
    old key of it: :class:`UserError`."""
    out = {k: v for k, v in data.items() if k not in LEGACY_KEYS}
    hints: list[str] = []
    for key, value in data.items():
        if key not in LEGACY_KEYS:
            continue
        hints.append(legacy_hint(key))
        *parents, leaf = LEGACY_KEYS[key].split(".")
        cur = out
        for i, p in enumerate(parents):
            nxt = cur.get(p)
            if nxt is None:
                nxt = {}
            elif not isinstance(nxt, dict):
                raise UserError(f"prune.{'.'.join(parents[:i + 1])} must be a mapping, got {nxt!r}")
            else:
                nxt = dict(nxt)
            cur[p] = nxt
            cur = nxt
        cur[leaf] = value
    return out, hints


def leaf_keys(cls: type, prefix: str = "", skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every dotted key of the dataclass ``cls`` (nested dataclass fields walked, fields named in ``skip`` left out) →
    its type hint: the keys a config of ``cls`` can set."""
    import typing

    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(t):
            out.update(leaf_keys(t, f"{prefix}{f.name}.", skip))  # type: ignore[arg-type]
        else:
            out[f"{prefix}{f.name}"] = t
    return out


def section_keys() -> dict[str, Any]:
    """Every dotted key under ``prune`` that a setting can take (``by_alignment`` left out) → its type hint."""
    return leaf_keys(PruneConfig, skip=frozenset({"by_alignment"}))


#: dotted prune keys ``by_alignment`` may not set: they decide which entry applies
DECIDES_ALIGNMENT = ("widths.round_to", "target.runtime")


def settable_keys() -> dict[str, Any]:
    """The dotted prune keys an entry of ``by_alignment`` may set → their type hints."""
    return {k: t for k, t in section_keys().items() if k not in DECIDES_ALIGNMENT}


def entry_keys(settings: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(one by_alignment entry as dotted keys, hints)``: nested section mappings flattened
    (``{target: {flops_reduction: x}}`` → ``target.flops_reduction``), flat keys of earlier versions read as their new
    keys (one hint each); a value that is itself a setting's mapping (``criterion.options``) stays whole."""
    known = settable_keys()
    out: dict[str, Any] = {}
    hints: list[str] = []

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if not prefix and legacy_hint(str(k)):
                hints.append(legacy_hint(str(k)))
                key = dotted_key(str(k))
            if isinstance(v, dict) and key not in known and any(s.startswith(f"{key}.") for s in known):
                walk(v, f"{key}.")
            else:
                out[key] = v

    walk(settings, "")
    return out, hints


def check_by_alignment(cfg: PruneConfig) -> None:
    """Raise :class:`UserError` (one line naming the entry and the fix) for an entry that is not ``block (integer ≥ 1) →
    mapping of settable dotted prune keys`` or whose settings, applied, fail :meth:`PruneConfig.validate`."""
    if not isinstance(cfg.by_alignment, dict):
        raise UserError(f"prune.by_alignment must be a mapping of channel block → prune settings, e.g. "
                        f"{{16: {{target.flops_reduction: 0.3}}}}, got {cfg.by_alignment!r}")
    allowed = list(settable_keys())
    for block, settings in cfg.by_alignment.items():
        if isinstance(block, bool) or not isinstance(block, int) or block < 1 or not isinstance(settings, dict):
            raise UserError(f"prune.by_alignment maps a channel block (an integer ≥ 1, e.g. 16) to a mapping of prune "
                            f"settings; got {block!r}: {settings!r}")
        for key in settings:
            if key not in allowed:
                why = "it decides which entry applies" if key in DECIDES_ALIGNMENT else \
                    f"not a prune key{closest(str(key), allowed)}"
                raise UserError(f"prune.by_alignment.{block} cannot set '{key}' ({why})")
        try:
            effective = cfg.updated(settings)
            effective.by_alignment = {}
            effective.validate()
        except (UserError, TypeError) as exc:
            raise UserError(f"prune.by_alignment.{block}: {exc}") from None
