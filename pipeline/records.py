"""Typed records of what the report reads: the run manifest (``manifest.json``) and the rows of ``report.json``.

The manifest is read once, by :meth:`RunManifest.load` (or :meth:`RunManifest.from_dict` for one already in memory),
checked for the fields the report relies on, and normalized: a missing or ``null`` sub-record becomes an empty one, so
the readers never walk ``.get(...) or {}`` chains. A damaged manifest is one :class:`~ccpcsa.errors.UserError` line
naming the file and the fix. Fields added after a run directory was made are optional with defaults, so old run
directories still load. The report's own rows (:class:`FormatRow`, :class:`ReportView`) are read the same way from a
``report.json`` dict (written by :func:`pipeline.report.build_report`, or read back from disk).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccpcsa.errors import UserError

from .artifacts import MANIFEST as MANIFEST_FILE

CHECK_KEYS = ("name", "passed", "value", "threshold")


def obj(value: Any) -> dict[str, Any]:
    """``value`` when it is a dict, else an empty dict (a field absent or ``null`` in an older file)."""
    return value if isinstance(value, dict) else {}


class ManifestError(ValueError):
    """What is wrong with a manifest, in a few words (turned into a :class:`UserError` naming the file)."""


@dataclass(frozen=True)
class CheckRecord:
    """One gate check of a stage: ``name``, ``passed``, the ``value`` seen and its ``threshold``."""

    name: str
    passed: bool
    value: Any
    threshold: Any

    @classmethod
    def from_dict(cls, data: Any, where: str) -> CheckRecord:
        """The check in ``data``; :class:`ManifestError` naming ``where`` when it is not an object with all four keys."""
        if not isinstance(data, dict) or any(k not in data for k in CHECK_KEYS):
            raise ManifestError(f"a check of {where} lacks one of {', '.join(CHECK_KEYS)}")
        return cls(str(data["name"]), bool(data["passed"]), data["value"], data["threshold"])

    def to_dict(self) -> dict[str, Any]:
        """The check as report.json writes it (the four keys, in that order)."""
        return {"name": self.name, "passed": self.passed, "value": self.value, "threshold": self.threshold}


@dataclass(frozen=True)
class StageRecord:
    """One stage's record in the manifest: ``status`` (``ok``, ``failed``, ``skipped`` or ``running``), ``reason``,
    ``outputs`` (``{relative path: SHA-256}``, in the order written), the stage's ``metrics`` (a plain dict, empty when
    none), its gate ``checks`` and its wall-clock ``seconds``."""

    name: str
    status: str
    reason: str | None = ""
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: tuple[CheckRecord, ...] = ()
    seconds: float | None = None

    @classmethod
    def from_dict(cls, name: str, data: Any) -> StageRecord:
        """The record of stage ``name``; :class:`ManifestError` when it is not an object with a string ``status``,
        or its outputs, metrics or checks have the wrong type."""
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise ManifestError(f"stage {name!r} has no status")
        outputs, metrics, checks = data.get("outputs"), data.get("metrics"), data.get("checks")
        if outputs is not None and not isinstance(outputs, dict):
            raise ManifestError(f"the outputs of stage {name!r} are not an object")
        if metrics is not None and not isinstance(metrics, dict):
            raise ManifestError(f"the metrics of stage {name!r} are not an object")
        if checks is not None and not isinstance(checks, list):
            raise ManifestError(f"the checks of stage {name!r} are not a list")
        return cls(name, data["status"], data.get("reason", ""), dict(obj(outputs)), dict(obj(metrics)),
                   tuple(CheckRecord.from_dict(c, f"stage {name!r}") for c in checks or []), data.get("seconds"))

    @property
    def artifact(self) -> str | None:
        """The stage's first recorded output (its artifact), or None when it recorded none."""
        return next(iter(self.outputs), None)

    @property
    def finished(self) -> bool:
        """False for the record of a stage that started and never finished (interrupted or killed)."""
        return self.status != "running"


@dataclass(frozen=True)
class ValidateRecord:
    """The parts of the ``validate`` stage's metrics the report reads, each empty when validate did not run (or ran
    before the field existed): per-format rows, the onnxruntime-CPU speedups (``speedup``, ``speedup_int8``), the
    per-runtime ones (``speedups``, None before per-runtime timing), the runtimes' identities, the unpruned reference
    files and the evaluation's image counts (None when not recorded)."""

    formats: dict[str, dict[str, Any]] = field(default_factory=dict)
    speedup: dict[str, Any] = field(default_factory=dict)
    speedup_int8: dict[str, Any] = field(default_factory=dict)
    speedup_reference: dict[str, Any] = field(default_factory=dict)
    speedups: dict[str, Any] | None = None
    runtimes: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> ValidateRecord:
        """The record of validate's ``metrics`` dict (``{}``: validate did not run)."""
        formats = {str(k): obj(v) for k, v in obj(metrics.get("formats")).items()}
        return cls(formats, obj(metrics.get("speedup")), obj(metrics.get("speedup_int8")),
                   obj(metrics.get("speedup_reference")), metrics.get("speedups") or None, obj(metrics.get("runtimes")),
                   metrics.get("evaluation") or None)

    def format(self, name: str) -> dict[str, Any]:
        """Format row ``name`` of validate's metrics (empty when validate has none of that name)."""
        return self.formats.get(name, {})


@dataclass(frozen=True)
class RunManifest:
    """A run's ``manifest.json``: the run's name, its ``config_hash``, the whole ``config`` (a plain dict) and its
    stages in the order they ran."""

    run: str | None
    config_hash: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageRecord] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = MANIFEST_FILE) -> RunManifest:
        """The manifest in ``data`` (a dict read from ``source``; an existing :class:`RunManifest` is returned as is).
        :class:`UserError` naming ``source`` and the fix when a field the report relies on is missing or of the wrong
        type: ``stages`` an object of stage records each with a ``status``, ``run`` and ``config_hash`` strings when
        present, ``config`` an object when present."""
        if isinstance(data, RunManifest):
            return data
        try:
            if not isinstance(data, dict):
                raise ManifestError(f"a {type(data).__name__}, not an object")
            stages = data.get("stages")
            if not isinstance(stages, dict):
                raise ManifestError("no stages")
            for key in ("run", "config_hash"):
                if data.get(key) is not None and not isinstance(data[key], str):
                    raise ManifestError(f"{key} is not a string")
            if data.get("config") is not None and not isinstance(data["config"], dict):
                raise ManifestError("config is not an object")
            records = {str(n): StageRecord.from_dict(str(n), rec) for n, rec in stages.items()}
        except ManifestError as exc:
            raise damaged(source, str(exc)) from None
        return cls(data.get("run"), data.get("config_hash"), dict(obj(data.get("config"))), records)

    @classmethod
    def load(cls, run_dir: Path) -> RunManifest:
        """``run_dir/manifest.json`` read and checked (:meth:`from_dict`). UserError for a missing, unreadable or
        damaged file."""
        path = Path(run_dir) / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{run_dir} is not a run directory (no {MANIFEST_FILE}); give the --run-dir of a run") from None
        except OSError as exc:
            raise UserError(f"cannot read {path} ({exc.strerror}); check its permissions") from exc
        except ValueError as exc:
            raise damaged(path, f"not valid JSON: {exc}") from exc
        return cls.from_dict(data, path)

    def stage(self, name: str) -> StageRecord | None:
        """Stage ``name``'s record, or None when the run has none."""
        return self.stages.get(name)

    def metrics(self, name: str) -> dict[str, Any]:
        """Stage ``name``'s metrics (empty when the stage has no record or no metrics)."""
        rec = self.stages.get(name)
        return rec.metrics if rec is not None else {}

    @property
    def validate(self) -> ValidateRecord:
        """The validate stage's metrics as a :class:`ValidateRecord` (empty ones when validate has not run)."""
        return ValidateRecord.from_metrics(self.metrics("validate"))

    @property
    def model(self) -> str | None:
        """The config's ``model.name``."""
        return obj(self.config.get("model")).get("name")

    @property
    def frontier(self) -> Any:
        """The config's ``report.frontier`` (a path, a list of paths, or None)."""
        return obj(self.config.get("report")).get("frontier")

    def artifacts(self) -> dict[str, str]:
        """``{file name: SHA-256}`` of every stage output the manifest records."""
        return {Path(rel).name: digest for rec in self.stages.values() for rel, digest in rec.outputs.items()}


def damaged(source: str | Path, problem: str) -> UserError:
    """The one-line error for a damaged manifest at ``source``: what is wrong and how to rebuild it."""
    return UserError(f"{source} is damaged ({problem}); it is only ever replaced whole, so something else changed it: "
                     "rerun `python -m pipeline run --config CONFIG --run-dir` on that run directory to rebuild it")


def speedups_by_runtime(record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{runtime: {"fp32"|"int8": {batch: …}}}`` of a validate record or report; a run validated before per-runtime
    timing has onnxruntime-cpu's only (``speedup`` / ``speedup_int8``)."""
    return record.get("speedups") or {"onnxruntime-cpu": {k: s for k, s in (("fp32", record.get("speedup")),
                                                                            ("int8", record.get("speedup_int8"))) if s}}


@dataclass(frozen=True)
class FormatRow:
    """One row of report.json's ``formats`` as the table reads it: latencies and throughputs per batch (empty when
    the format was not timed); every other field as written (None when absent)."""

    name: str
    status: str = "ok"
    reason: str | None = None
    file: str | None = None
    runtime: str | None = None
    gated: bool | None = None
    made_for: tuple[str, ...] = ()
    size_bytes: int | None = None
    params: Any = None
    flops: Any = None
    accuracy: float | None = None
    accuracy_se: float | None = None
    accuracy_n: Any = None
    parity: str | None = None
    latency_ms: dict[str, dict[str, Any]] = field(default_factory=dict)
    images_per_s: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FormatRow:
        """The row of one ``formats`` entry (a dict with at least ``name``)."""
        g = data.get
        return cls(str(data["name"]), g("status", "ok"), g("reason"), g("file"), g("runtime"), g("gated"),
                   tuple(g("made_for") or ()), g("size_bytes"), g("params"), g("flops"), g("accuracy"), g("accuracy_se"),
                   g("accuracy_n"), g("parity"), {str(b): obj(v) for b, v in obj(g("latency_ms")).items()},
                   obj(g("images_per_s")))

    def latency(self, batch: str) -> dict[str, Any]:
        """``{"p50", "p95", …}`` at ``batch`` (empty when not timed there)."""
        return self.latency_ms.get(batch, {})


@dataclass(frozen=True)
class ReportView:
    """The parts of a report.json dict the Markdown sections read, each empty when absent (a report of a run that
    has not been validated, or of an older version): the baseline, the evaluation's image counts, the format rows,
    the speedups per runtime and precision, the runtimes' identities, the unpruned reference files, the target the
    widths were chosen for and how they were chosen (``pruning``, with its ``latency`` step)."""

    run: str | None = None
    baseline: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    formats: tuple[FormatRow, ...] = ()
    speedup: dict[str, Any] = field(default_factory=dict)
    speedup_int8: dict[str, Any] = field(default_factory=dict)
    speedups: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    runtimes: dict[str, Any] = field(default_factory=dict)
    speedup_reference: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    pruning: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, report: Mapping[str, Any]) -> ReportView:
        """The view of a report dict (any subset of report.json's keys)."""
        per = {str(rt): {str(k): obj(v) for k, v in obj(kinds).items()} for rt, kinds in speedups_by_runtime(report).items()}
        return cls(report.get("run"), obj(report.get("baseline")), obj(report.get("evaluation")),
                   tuple(FormatRow.from_dict(f) for f in report.get("formats") or ()), obj(report.get("speedup")),
                   obj(report.get("speedup_int8")), per, obj(report.get("runtimes")),
                   obj(report.get("speedup_reference")), obj(report.get("target")), obj(report.get("pruning")))

    def format(self, name: str) -> FormatRow | None:
        """The format row ``name``, or None when the report has none."""
        return next((f for f in self.formats if f.name == name), None)

    @property
    def weights(self) -> dict[str, Any]:
        """The baseline's weights record (empty when not recorded)."""
        return obj(self.baseline.get("weights"))

    @property
    def latency_step(self) -> dict[str, Any]:
        """The pruning's latency record (target and final speedup; empty when pruning had no latency target)."""
        return obj(self.pruning.get("latency"))
