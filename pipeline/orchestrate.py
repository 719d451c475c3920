"""Stage runner: config → stage → artifact → checks → manifest, resumable and locked.

Each stage is a function ``fn(ctx) -> StageOutcome`` registered in :data:`pipeline.stages.STAGES`
with the config sections it depends on. Its *key* is the SHA-256 of those sections plus the hashes of
every artifact produced by earlier stages; a rerun skips a stage whose key is unchanged and whose
recorded outputs are intact, re-runs a changed stage and everything after it, and ``--from``
forces a stage and its successors. A failed gate marks the stage ``failed``, stops the chain and
returns a non-zero exit code; earlier artifacts are kept.

Crash safety: a stage about to run is first recorded as ``running`` with no outputs, so a run killed at
any moment leaves a manifest that refers only to complete files with their hashes; the next run takes
over the killed run's lock, deletes its temporary files and re-runs that stage and everything after
it. Every stage starts from the same seeded RNG state, so a resumed chain gives the same results as an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ccpcsa.errors import UserError, first_line, unknown
from ccpcsa.training.distributed import resolve_device
from ccpcsa.training.engine import seed_everything

from .checks import Check
from .config import PipelineConfig
from .manifest import Manifest, clear_temp_files, hash_outputs, now, outputs_intact, run_lock


@dataclass
class StageOutcome:
    """What a stage returns: status, reason, artifacts written, metrics and gate results."""

    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    outputs: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    gate_failed: bool = False  # failed only because a check failed: the work itself completed

    def gate(self) -> StageOutcome:
        """Mark the outcome failed if any check failed (reason lists them)."""
        bad = [c for c in self.checks if not c.passed]
        if bad and self.status == "ok":
            self.status = "failed"
            self.reason = "; ".join(c.describe() for c in bad)
            self.gate_failed = True
        return self


@dataclass
class StageContext:
    """Shared state for the stages of one run."""

    cfg: PipelineConfig
    run_dir: Path
    manifest: Manifest
    device: torch.device
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # the running stage's key (config sections + upstream artifact hashes)

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def say(self, text: str) -> None:
        print(text, flush=True)


@dataclass(frozen=True)
class Stage:
    """A named step with the config sections that determine its result."""

    name: str
    fn: Callable[[StageContext], StageOutcome]
    sections: tuple[str, ...]
    doc: str = ""
    # The run-directory files (:mod:`pipeline.artifacts`) the stage reads from earlier stages and the ones it writes, as
    # ``python -m pipeline stages`` lists them; what it actually wrote is recorded in the manifest with its hashes.
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    # Files outside the run directory the stage reads (e.g. baseline.checkpoint): {path: sha256 or "missing"}.
    # Part of the stage key, so replacing such a file re-runs the stage even though the config is unchanged.
    external: Callable[[PipelineConfig], dict[str, str]] | None = None
    # Config keys only the stage's checks read, and the function that re-evaluates those checks from the recorded
    # metrics. Changing a gate then re-gates the stage's finished work in a moment instead of redoing it (a prune
    # stage is minutes to hours of training); the gate keys are not part of the stage key.
    gates: tuple[str, ...] = ()
    regate: Callable[[PipelineConfig, dict[str, Any]], list[Check]] | None = None


def _gates_hash(stage: Stage, cfg: PipelineConfig) -> str | None:
    """SHA-256 of the stage's gate settings (None for a stage without re-gatable checks)."""
    return cfg.section_hash(*stage.gates) if stage.gates else None


def _regate_due(stage: Stage, record: dict[str, Any] | None, key: str, run_dir: Path, cfg: PipelineConfig) -> bool:
    """True when ``record`` holds this stage's completed work for ``key`` (ok, or failed only at a gate) with intact
    outputs, and its gates changed or it failed at one: its checks are then re-evaluated from its metrics instead of
    running the stage again."""
    if stage.regate is None or not record or record.get("key") != key:
        return False
    failed_at_gate = record.get("status") == "failed" and bool(record.get("gate_failed"))
    if record.get("status") != "ok" and not failed_at_gate:
        return False
    if not failed_at_gate and record.get("gates_hash") == _gates_hash(stage, cfg):
        return False
    return bool(record.get("outputs")) and outputs_intact(record, run_dir)


def _print_outcome(name: str, out: StageOutcome, seconds: float | None = None) -> None:
    """The stage's checks, one line each, then its status line."""
    for c in out.checks:
        print(f"   check {c.describe()}", flush=True)
    msg = f"── {name}: {out.status}" + (f" — {out.reason}" if out.reason else "")
    print(msg + (f" ({seconds:.1f}s)" if seconds is not None else ""), flush=True)


def _regate(stage: Stage, cfg: PipelineConfig, manifest: Manifest, record: dict[str, Any]) -> StageOutcome:
    """Re-evaluate ``stage``'s checks on its recorded metrics under the current gate settings; record the result."""
    assert stage.regate is not None
    out = StageOutcome(metrics=record.get("metrics") or {}, checks=stage.regate(cfg, record.get("metrics") or {})).gate()
    manifest.set_stage(stage.name, {**record, "status": out.status, "reason": out.reason, "gate_failed": out.gate_failed,
                                    "gates_hash": _gates_hash(stage, cfg), "checks": [c.to_dict() for c in out.checks],
                                    "regated": now()})
    return out


def _banner(text: str) -> None:
    bar = "═" * max(10, 76 - len(text))
    print(f"\n══ {text} {bar}", flush=True)


def run_stages(cfg: PipelineConfig, stages: list[Stage], run_dir: Path, *, from_stage: str | None = None,
               until: str | None = None, progress: bool = True) -> int:
    """Run ``stages`` in order inside ``run_dir``; return 0 when every stage ended ok/skipped, else 1.

    A stage whose key (its config sections, its inputs' hashes, its external inputs) and outputs are unchanged is
    skipped; one whose work is current but whose gates changed is re-gated on its recorded metrics
    (:class:`Stage`); any other — and every stage after the first that runs, or from ``from_stage`` on — runs."""
    names = [s.name for s in stages]
    for n in (from_stage, until):
        if n is not None and n not in names:
            raise unknown("stage", n, names)
    _check_writable(run_dir)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    with run_lock(run_dir) as stale:
        manifest = _open_manifest(cfg, run_dir, stale)
        ctx = StageContext(cfg, run_dir, manifest, resolve_device(cfg.run.device), progress)
        dirty = False
        upstream: dict[str, str] = {}
        for stage in stages:
            if from_stage is not None and stage.name == from_stage:
                dirty = True
            external = stage.external(cfg) if stage.external else {}
            key = hashlib.sha256(json.dumps({"config": cfg.section_hash(*stage.sections), "inputs": upstream,
                                             **({"external": external} if external else {})},
                                            sort_keys=True).encode()).hexdigest()
            record = manifest.stage(stage.name)
            if not dirty and record is not None and _regate_due(stage, record, key, run_dir, cfg):
                out = _regate(stage, cfg, manifest, record)
                upstream.update(record.get("outputs") or {})
                print(f"── {stage.name}: work up to date, checks re-evaluated under the current gates "
                      f"({', '.join(stage.gates)}); --from {stage.name} redoes the work", flush=True)
                _print_outcome(stage.name, out)
                if out.status == "failed":
                    print(f"error: stage {stage.name} failed: {out.reason}; its artifacts are kept in {run_dir} — loosen the gate "
                          f"({', '.join(stage.gates)}) to go on with them", file=sys.stderr, flush=True)
                    return 1
            elif not dirty and record is not None and manifest.is_current(stage.name, key, run_dir):
                print(f"── {stage.name}: up to date ({record.get('status')}), skipping", flush=True)
                upstream.update(record.get("outputs") or {})
            else:
                dirty = True
                if _execute(stage, ctx, key, upstream) == "failed":
                    return 1
            if until is not None and stage.name == until:
                break
    return 0


def _check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` and write a probe file in it; one :class:`UserError` line when that fails."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"run directory {run_dir} is not writable ({exc.strerror}); choose another with --run-dir") from exc


def _open_manifest(cfg: PipelineConfig, run_dir: Path, stale: dict[str, Any] | None) -> Manifest:
    """Under the run lock: say what a killed run left (a stale lock, temporary files, removed), open the manifest and
    record the config and its hash."""
    if stale:
        who = f"pid {stale['pid']} on {stale.get('host', '?')}" if stale.get("pid") else "an empty lock file"
        print(f"note: cleared a stale lock ({who}, since {stale.get('since', '?')}): that run was killed", flush=True)
    leftovers = clear_temp_files(run_dir)
    if leftovers:
        print(f"note: removed {len(leftovers)} temporary file(s) of an interrupted write: "
              f"{', '.join(str(p.relative_to(run_dir)) for p in leftovers)}", flush=True)
    manifest = Manifest.open(run_dir, cfg.run.name)
    manifest.data["config_hash"] = cfg.section_hash()
    manifest.data["config"] = cfg.to_dict()
    manifest.save()
    return manifest


def _execute(stage: Stage, ctx: StageContext, key: str, upstream: dict[str, str]) -> str:
    """Run ``stage`` and record it (its outputs' hashes join ``upstream``); return its status. A :class:`UserError`
    restores the stage's previous record when its outputs are intact (else records the failure) and propagates; any
    other exception is a failed stage with its traceback printed, earlier artifacts kept."""
    cfg, run_dir, manifest = ctx.cfg, ctx.run_dir, ctx.manifest
    t0 = time.perf_counter()
    base = {"key": key, "config_hash": cfg.section_hash(*stage.sections), "inputs": dict(upstream), "started": now()}
    previous = manifest.stage(stage.name)
    # Before the stage may rewrite its files, forget its previous outputs: a run killed from
    # here on leaves a 'running' record that points at no file, never a stale hash.
    manifest.set_stage(stage.name, {"status": "running", "reason": "started, not finished (interrupted or killed)",
                                    **base, "key": None, "outputs": {}, "metrics": {}, "checks": [],
                                    "ended": None, "seconds": None})
    _banner(f"stage {stage.name}")
    # Every stage starts from the same RNG state, whichever stages ran before it in this process,
    # so a resumed chain reproduces an uninterrupted one.
    seed_everything(cfg.run.seed)
    ctx.key = key
    try:
        out = stage.fn(ctx).gate()
    except UserError as exc:
        manifest.set_stage(stage.name, previous if previous and outputs_intact(previous, run_dir) else {
            "status": "failed", "reason": str(exc), **base, "outputs": {}, "metrics": {}, "checks": [],
            "ended": now(), "seconds": round(time.perf_counter() - t0, 2)})
        raise
    except Exception as exc:  # a bug or an environment failure: record it, keep artifacts
        traceback.print_exc()
        out = StageOutcome("failed", first_line(exc, with_type=True))
    outputs = hash_outputs(run_dir, [p for p in out.outputs if p.is_file()])
    manifest.set_stage(stage.name, {
        "status": out.status, "reason": out.reason, "gate_failed": out.gate_failed,
        "gates_hash": _gates_hash(stage, cfg), **base, "outputs": outputs, "metrics": out.metrics,
        "checks": [c.to_dict() for c in out.checks], "ended": now(), "seconds": round(time.perf_counter() - t0, 2)})
    upstream.update(outputs)
    _print_outcome(stage.name, out, time.perf_counter() - t0)
    if out.status == "failed":
        print(f"error: stage {stage.name} failed: {out.reason}; earlier artifacts are kept in {run_dir}",
              file=sys.stderr, flush=True)
    return out.status
