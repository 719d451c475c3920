"""Typed pipeline configuration: YAML file + ``--set a.b=c`` overrides → :class:`PipelineConfig`.

Unknown keys are rejected with the closest valid key; values are type-checked against the dataclass
field types and range-checked by each section's ``validate``. The config hash (SHA-256 of the
canonical JSON) identifies a run's settings in manifests, ONNX metadata and reports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ccpcsa.errors import UserError, closest
from ccpcsa.pruning.loop import PruneConfig
from ccpcsa.pruning.operating_point import entry_keys, settable_keys
from ccpcsa.pruning.settings import dotted_key, leaf_keys, nest_legacy
from ccpcsa.training.engine import TrainConfig

from .config_sections import (
    AttentionConfig,
    BaselineConfig,
    ChecksConfig,
    DataConfig,
    ExportConfig,
    ModelConfig,
    ReportConfig,
    RunConfig,
)
from .target import TargetConfig

__all__ = ["AttentionConfig", "BaselineConfig", "ChecksConfig", "DataConfig", "ExportConfig", "ModelConfig",
           "PipelineConfig", "ReportConfig", "RunConfig", "load_config", "valid_keys", "key_tree"]


#: Keys added after run directories existed, with the value that means "not used": a key at that value stays out of
#: the stage keys (:meth:`PipelineConfig.section_hash`), so upgrading does not re-run finished stages of old runs.
KEYED_ONLY_WHEN_SET: dict[str, Any] = {"prune.round_to_wide": None, "prune.by_alignment": {}, "target.profile": "onnxruntime-cpu",
                                       "target.precision": "fp32", "target.runtimes": ["onnxruntime-cpu"]}


@dataclass
class PipelineConfig:
    """The whole configuration; sections mirror the YAML keys."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    target: TargetConfig = field(default_factory=TargetConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """SHA-256 of the canonical JSON of the named sections or dotted keys (all when none given); a key of
        :data:`KEYED_ONLY_WHEN_SET` at its "not used" value is left out."""
        d = self.to_dict()
        d["prune"] = self.prune.legacy_flat()  # the flat form of earlier versions: old run directories keep their keys
        for dotted, unused in KEYED_ONLY_WHEN_SET.items():
            top, _, key = dotted.partition(".")
            if d[top].get(key, unused) == unused:
                d[top].pop(key, None)
        picked: dict[str, Any] = {}
        for s in sections or tuple(d):
            top, _, key = s.partition(".")
            if not key and d[top] == {} and all(k.startswith(f"{top}.") for k in KEYED_ONLY_WHEN_SET if k.startswith(top)):
                continue  # a section added later, all at its "not used" values: old runs keep their keys
            if key and key not in d[top]:
                continue
            picked[s] = d[top][key] if key else d[top]
        return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()

    def validate(self) -> None:
        """Range checks; :class:`UserError` naming the key for any bad value."""
        self.train.validate()
        self.prune.validate()
        self.target.validate()
        from ccpcsa.criteria import list_criteria

        if self.prune.criterion.name not in list_criteria():
            from ccpcsa.errors import unknown

            raise unknown("prune.criterion.name", self.prune.criterion.name, list_criteria())
        from ccpcsa.criteria import get_criterion

        get_criterion(self.prune.criterion.name, **self.prune.criterion.options)  # bad options: one line naming them
        checks = [
            (self.model.num_classes >= 2, f"model.num_classes must be ≥ 2, got {self.model.num_classes}"),
            (self.run.seed >= 0, f"run.seed must be ≥ 0, got {self.run.seed}"),
            (self.attention.reduction >= 1 and self.attention.dilation >= 1, "attention.reduction and attention.dilation must be ≥ 1"),
            (self.attention.epochs >= 0, f"attention.epochs must be ≥ 0, got {self.attention.epochs}"),
            (self.attention.lr > 0, f"attention.lr must be > 0, got {self.attention.lr}"),
            (self.attention.max_steps_per_epoch is None or self.attention.max_steps_per_epoch >= 1,
             f"attention.max_steps_per_epoch must be ≥ 1 or null, got {self.attention.max_steps_per_epoch}"),
            (13 <= self.export.opset <= 20, f"export.opset must be in 13..20 (per-channel QDQ needs ≥ 13), got {self.export.opset}"),
            (self.export.calibration_images >= 1, f"export.calibration_images must be ≥ 1, got {self.export.calibration_images}"),
            (self.export.int8_reduce_range in ("auto", True, False),
             f"export.int8_reduce_range must be auto, true or false, got {self.export.int8_reduce_range!r}"),
            (1 <= self.export.min_batch <= self.export.opt_batch <= self.export.max_batch,
             "export batches must satisfy 1 ≤ min_batch ≤ opt_batch ≤ max_batch"),
            (all(b >= 1 for b in self.export.latency_batches), "export.latency_batches must all be ≥ 1"),
            (self.export.latency_iters >= 1, "export.latency_iters must be ≥ 1"),
            (self.export.speedup_rounds >= 2, f"export.speedup_rounds must be ≥ 2, got {self.export.speedup_rounds}"),
            (set(self.export.engine_precisions) <= {"fp32", "fp16", "int8"}, "export.engine_precisions: use fp32, fp16, int8"),
            (self.checks.max_accuracy_drop >= 0, "checks.max_accuracy_drop must be ≥ 0"),
            (all(0 <= v <= 100 for v in (self.checks.min_agreement_fp32, self.checks.min_agreement_lowp, self.checks.min_agreement_int8)),
             "checks.min_agreement_* are percentages in [0, 100]"),
            (self.checks.eval_images is None or self.checks.eval_images >= 1, "checks.eval_images must be ≥ 1 or null"),
            (self.checks.final_eval_images is None or self.checks.final_eval_images >= 1,
             "checks.final_eval_images must be ≥ 1 or null (null = the whole test split)"),
            (self.data.val_size is None or self.data.val_size >= 0, "data.val_size must be ≥ 0 or null"),
        ]
        checks += [
            (self.run.threads >= 0, f"run.threads must be ≥ 0 (0 = torch default), got {self.run.threads}"),
            (self.model.input_size is None or self.model.input_size >= 8, "model.input_size must be ≥ 8 or null"),
            (self.export.workspace_mb >= 1, f"export.workspace_mb must be ≥ 1, got {self.export.workspace_mb}"),
            (self.export.latency_warmup >= 0, f"export.latency_warmup must be ≥ 0, got {self.export.latency_warmup}"),
            (self.export.threads >= 1, f"export.threads (onnxruntime CPU threads) must be ≥ 1, got {self.export.threads}"),
            (self.checks.max_abs_diff >= 0, f"checks.max_abs_diff must be ≥ 0, got {self.checks.max_abs_diff}"),
            (self.checks.latency_budget_ms is None or self.checks.latency_budget_ms > 0,
             "checks.latency_budget_ms must be > 0 or null"),
            (self.checks.latency_budget_batch >= 1, "checks.latency_budget_batch must be ≥ 1"),
            (self.checks.min_speedup_efficiency is None or 0 < self.checks.min_speedup_efficiency <= 2,
             f"checks.min_speedup_efficiency must be in (0, 2] (speedup / MACs ratio) or null, got {self.checks.min_speedup_efficiency}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        from ccpcsa.training.engine import check_device

        check_device(self.run.device, "run.device")
        self._validate_model()
        self._validate_target()
        self._validate_data()
        self._validate_baseline()

    def _validate_model(self) -> None:
        """``model.name`` must be a zoo name or an importable ``package.module:factory`` that builds a model from
        ``model.num_classes`` and ``model.kwargs`` (built once here, so a failing factory stops the run before the
        run directory is touched)."""
        from ccpcsa.errors import unknown
        from ccpcsa.models.registry import ZOO, _resolve_custom, is_custom

        name = self.model.name
        if is_custom(name):
            _resolve_custom(name)
        elif name not in ZOO:
            raise unknown("model", name, [*ZOO, "package.module:factory"])
        if "num_classes" in self.model.kwargs:
            raise UserError("model.kwargs.num_classes: the class count is model.num_classes; remove it from model.kwargs")
        from ccpcsa.models import build_model

        build_model(name, self.model.num_classes, **self.model.kwargs)  # a factory that raises: one line, now

    def _validate_target(self) -> None:
        """A ``target.profile`` file must be a profile with ``target.precision`` timed for this config's model
        (checked here, before the run directory is touched)."""
        from export.runtime import CPU_RUNTIMES

        if self.target.profile in CPU_RUNTIMES:
            return
        from ccpcsa.models import build_model
        from export.target_profile import load_profile

        prof = load_profile(self.target.profile)
        prof.need(self.target.precision)
        prof.check_model(build_model(self.model.name, self.model.num_classes, **self.model.kwargs), self.model.input_size)

    def _validate_data(self) -> None:
        """``data.spec`` (or, when its path is absent, ``data.fallback``) must be a valid spec whose path exists."""
        from ccpcsa.data import parse_spec

        spec = self.data.spec
        if isinstance(spec, str) and spec.startswith("imagefolder:") and self.data.fallback:
            path = Path(spec.split(":", 1)[1]).expanduser()
            if spec.split(":", 1)[1] and not path.exists():
                spec = self.data.fallback  # the baseline stage falls back (and says so)
        try:
            parse_spec(spec, progress=False)
        except UserError as exc:
            key = "data.spec" if spec == self.data.spec else "data.fallback"
            fix = "" if self.data.fallback or key != "data.spec" else " (or set data.fallback, e.g. synthetic)"
            raise UserError(f"{key}: {exc}{fix}") from None

    def _validate_baseline(self) -> None:
        """``baseline.checkpoint``, when set, must exist (unless ``baseline.train_if_missing``) and fit the config.

        Checked here, before the run directory is touched: the project's checkpoint must hold ``model.name``
        with ``model.num_classes``; bare weights (state_dict, safetensors) must match the architecture
        ``model.*`` builds, key for key and shape for shape. A file that cannot be read safely (truncated, not
        a checkpoint, code inside, non-tensor entries, NaN/Inf weights) is left to the ``baseline`` stage,
        which refuses it before any training and records the failure in the manifest.
        """
        path = self.baseline.checkpoint
        if not path:
            return
        from ccpcsa.io.checkpoint import ModelSpec, match_state_dict
        from ccpcsa.io.weights import read_weights
        from ccpcsa.models import build_model

        p = Path(path).expanduser()
        if not p.exists() and self.baseline.train_if_missing:
            return  # the baseline stage trains one and says so
        if not p.is_file():
            what = "is a directory, not a checkpoint file" if p.is_dir() else "does not exist"
            raise UserError(f"baseline.checkpoint {p} {what}; fix the path, set baseline.train_if_missing=true "
                            "or unset the key to train a baseline")
        try:
            weights = read_weights(p)
        except UserError:
            return
        if weights.raw is None:
            spec = ModelSpec(self.model.name, self.model.num_classes, self.model.input_size or 32, dict(self.model.kwargs))
            net = build_model(spec.name, spec.num_classes, **spec.kwargs)
            match_state_dict(net, weights.state, spec, f"baseline.checkpoint {p} ({weights.source})")
            return
        model = weights.raw.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            return  # damaged: the stage says so
        if model["name"].strip() != self.model.name.strip():
            raise UserError(
                f"baseline.checkpoint {p} holds a '{model['name']}' model but model.name is '{self.model.name}'; "
                f"set --set model.name={model['name']} or use a checkpoint of '{self.model.name}'"
            )
        if model.get("num_classes") != self.model.num_classes:
            raise UserError(
                f"baseline.checkpoint {p} has {model.get('num_classes')} classes but model.num_classes is "
                f"{self.model.num_classes}; set --set model.num_classes={model.get('num_classes')} or use a matching checkpoint"
            )


def valid_keys() -> list[str]:
    """Every dotted key a config may set."""
    return list(leaf_keys(PipelineConfig))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alt in inner[1:]:  # e.g. ``int | str`` (prune.widths.round_to: 16 or auto): the member the value already is
            if isinstance(value, alt) and not (alt is int and isinstance(value, bool)):
                return value
        return _coerce(value, inner[0], key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise UserError(f"config key {key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"config key {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN != NaN
            raise UserError(f"config key {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config key {key} must be a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key {key} must be a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {key} must be a mapping, got {value!r}")
        return dict(value)
    return value


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '(top level)'} must be a mapping, got {data!r}")
    if isinstance(obj, PruneConfig):
        data = _nest_legacy_prune(data)
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise UserError(f"unknown config key '{key}'{closest(key, valid_keys())}")
        t = hints[k]
        if dataclasses.is_dataclass(t):
            _apply(getattr(obj, k), {} if v is None else v, key + ".")
        else:
            setattr(obj, k, _coerce(v, t, key))


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` → (``a.b``, YAML-parsed value)."""
    if "=" not in text:
        raise UserError(f"--set '{text}' must look like key=value (e.g. prune.target.flops_reduction=0.5)")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read YAML ``path`` (optional), apply ``overrides`` (``key=value``), validate, and return the config."""
    cfg = PipelineConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist; see configs/ for examples")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise UserError(f"config file {p} is not valid YAML{where}") from exc
        _apply(cfg, data)
    given: set[str] = set()
    for item in overrides or []:
        key, value = parse_override(item)
        _apply(cfg, _nest(key, value))
        given.add(key)
    _settle_by_alignment(cfg.prune, {dotted_key(k.removeprefix("prune.")) for k in given if k.startswith("prune.")})
    cfg.validate()
    return cfg


def _nest_legacy_prune(data: Any) -> Any:
    """The ``prune`` mapping with the flat keys of earlier versions moved into their sections, a one-line hint on stderr
    for each (:func:`ccpcsa.pruning.settings.nest_legacy`)."""
    if not isinstance(data, dict):
        return data
    nested, hints = nest_legacy(data)
    for hint in hints:
        print(hint, file=sys.stderr)
    return nested


def _settle_by_alignment(prune: PruneConfig, given: set[str]) -> None:
    """Bring each entry of ``prune.by_alignment`` to dotted keys (:func:`ccpcsa.pruning.operating_point.entry_keys`),
    give its values their keys' types (as the YAML of ``prune.*`` gets them) and drop every entry that sets a prune key
    the command line set (``given``, dotted): an entry is one operating point (a target and its step go together), and an
    explicit ``--set prune.K=…`` takes the operating point over. The entries' shape and ranges are checked by
    :func:`ccpcsa.pruning.operating_point.check_by_alignment`."""
    if not isinstance(prune.by_alignment, dict):
        return
    hints = settable_keys()
    for block, settings in list(prune.by_alignment.items()):
        if not isinstance(settings, dict):
            continue
        entry, said = entry_keys(settings)
        for hint in said:
            print(hint.replace("prune.", f"prune.by_alignment.{block}.", 1), file=sys.stderr)
        if given & set(entry):
            del prune.by_alignment[block]
            continue
        prune.by_alignment[block] = {k: _coerce(v, hints[k], f"prune.by_alignment.{block}.{k}") if k in hints else v
                                     for k, v in entry.items()}


def key_tree() -> str:
    """Every config key as an indented tree, each leaf with its type and default (``python -m pipeline keys``)."""
    lines: list[str] = []

    def walk(obj: Any, depth: int) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"{'  ' * depth}{f.name}:")
                walk(value, depth + 1)
            else:
                tp = getattr(hints[f.name], "__name__", None) or str(hints[f.name]).replace("typing.", "")
                lines.append(f"{'  ' * depth}{f.name}: {json.dumps(value, default=str)}  # {tp}")

    walk(PipelineConfig(), 0)
    return "\n".join(lines)
