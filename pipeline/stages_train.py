"""Training-side stages: ``baseline`` → ``attention`` → ``prune`` (CCPCSA steps 1–3)."""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ccpcsa.criteria import get_criterion
from ccpcsa.data import ArrayDataset, DataSplits, load_data
from ccpcsa.errors import UserError
from ccpcsa.io.artifacts import sha256_file
from ccpcsa.io.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from ccpcsa.models import build_model, count_complexity, native_input_size
from ccpcsa.models.attention import attach_bam, detach_bam
from ccpcsa.pruning.loop import PruneConfig, run_pruning
from ccpcsa.pruning.operating_point import apply_by_alignment
from ccpcsa.surgery.prune import channels_per_layer
from ccpcsa.training.engine import evaluate, fit, seed_everything

from .accuracy import accuracy_record
from .artifacts import ATTENTION_CKPT, BASELINE_CKPT, HISTORY, PRUNED_CKPT, train_ckpt, train_ckpt_glob
from .checks import Check, accuracy_drop, at_least, flops_target
from .config import PipelineConfig
from .orchestrate import StageContext, StageOutcome

WEIGHT_FORMS = {"checkpoint": "ccpcsa checkpoint", "state_dict": "bare state_dict", "safetensors": "safetensors"}


def data_splits(ctx: StageContext) -> DataSplits:
    """The run's dataset (cached per process). Falls back to ``data.fallback`` when the spec's path is absent, saying so."""
    if "data" in ctx.cache:
        return ctx.cache["data"]
    spec = ctx.cfg.data.spec
    if spec.startswith("imagefolder:") and not Path(spec.split(":", 1)[1]).exists() and ctx.cfg.data.fallback:
        ctx.say(f"note: {spec.split(':', 1)[1]} not found; using data.fallback '{ctx.cfg.data.fallback}' instead")
        spec = ctx.cfg.data.fallback
    data = load_data(spec, val_size=ctx.cfg.data.val_size, seed=ctx.cfg.run.seed, progress=ctx.progress)
    if len(data.classes) != ctx.cfg.model.num_classes:
        from ccpcsa.errors import UserError

        raise UserError(f"model.num_classes is {ctx.cfg.model.num_classes} but dataset {spec} has {len(data.classes)} classes; "
                        f"set --set model.num_classes={len(data.classes)}")
    ctx.cache["data"] = data
    return data


def evaluation_sample(test: ArrayDataset, eval_images: int | None) -> ArrayDataset:
    """``test`` limited to a fixed seeded sample of ``eval_images`` images (all when None): the same sample for
    every run, stage and benchmark; the split is stored sorted by class, so never a prefix."""
    return test.sample(eval_images, seed=0)


def eval_split(ctx: StageContext) -> ArrayDataset:
    """The run's evaluation split: :func:`evaluation_sample` of the test split with ``checks.eval_images``."""
    return evaluation_sample(data_splits(ctx).test, ctx.cfg.checks.eval_images)


def input_size(ctx: StageContext) -> int:
    """Model input side: ``model.input_size`` or the dataset's."""
    return ctx.cfg.model.input_size or data_splits(ctx).input_size or native_input_size(ctx.cfg.model.name)


def model_metrics(ctx: StageContext, model: Any) -> dict[str, Any]:
    """Test accuracy (percent, on :func:`eval_split`, with its image count ``accuracy_n`` and standard error
    ``accuracy_se`` in pp), val accuracy, params and MACs of a torch model."""
    data = data_splits(ctx)
    c = count_complexity(model, input_size(ctx))
    split = eval_split(ctx)
    test_acc, _ = evaluate(model, split, data.mean, data.std, device=ctx.device)
    val_acc, _ = evaluate(model, data.val, data.mean, data.std, device=ctx.device)
    return {**accuracy_record(test_acc, len(split)), "val_accuracy": val_acc, "params": c.params, "flops": c.macs}


def baseline_inputs(cfg: Any) -> dict[str, str]:
    """``{baseline.checkpoint: its SHA-256, or "missing"}`` (``{}`` when unset): part of the baseline stage's key,
    so new weights saved over the same file re-run the chain."""
    path = cfg.baseline.checkpoint
    if not path:
        return {}
    p = Path(path).expanduser()
    return {str(path): sha256_file(p) if p.is_file() else "missing"}


def stage_baseline(ctx: StageContext) -> StageOutcome:
    """Train the model, or load ``baseline.checkpoint`` (project checkpoint, state_dict or safetensors; trained
    instead when it is absent and ``baseline.train_if_missing``) → ``baseline.pt`` in the project's format. The
    metrics record ``weights``: ``{"source": "trained" | "checkpoint" | "state_dict" | "safetensors", "sha256",
    "path"}`` (the SHA-256 of the given file's bytes)."""
    cfg, data = ctx.cfg, data_splits(ctx)
    out = ctx.path(BASELINE_CKPT)
    seed_everything(cfg.run.seed)
    # The per-epoch training checkpoint is named after the stage key, so an interrupted run resumes only
    # under the same config: a leftover of a run with other settings is deleted, never resumed from.
    train_ck = ctx.path(train_ckpt(ctx.key))
    given = Path(cfg.baseline.checkpoint).resolve() if cfg.baseline.checkpoint else None
    for old in ctx.run_dir.glob(train_ckpt_glob()):
        if old != train_ck and old.resolve() != given:
            old.unlink(missing_ok=True)
    weights: dict[str, Any] = {"source": "trained"}
    if cfg.baseline.checkpoint and not Path(cfg.baseline.checkpoint).expanduser().exists() and cfg.baseline.train_if_missing:
        ctx.say(f"note: baseline.checkpoint {cfg.baseline.checkpoint} not found; training a baseline instead "
                "(baseline.train_if_missing)")
    elif cfg.baseline.checkpoint:
        # Bare weights (state_dict, safetensors) get their architecture from model.*; the project's checkpoint
        # carries its own. Either way the weights are used exactly as given: no training here.
        bare = ModelSpec(cfg.model.name, cfg.model.num_classes, input_size(ctx), dict(cfg.model.kwargs))
        ck = load_checkpoint(Path(cfg.baseline.checkpoint).expanduser(), expect_classes=len(data.classes), spec=bare)
        model, spec = ck.model, ck.spec
        weights = {"source": ck.source, "sha256": ck.sha256, "path": str(cfg.baseline.checkpoint)}
        ctx.say(f"loaded baseline weights {cfg.baseline.checkpoint} ({WEIGHT_FORMS[ck.source]}, SHA-256 {ck.sha256}); "
                "used as given, no training")
    if weights["source"] == "trained":
        spec = ModelSpec(cfg.model.name, cfg.model.num_classes, input_size(ctx), dict(cfg.model.kwargs))
        model = build_model(cfg.model.name, cfg.model.num_classes, **cfg.model.kwargs)
        if train_ck.exists():
            ctx.say(f"resuming the interrupted training from {train_ck.name}")
        fit(model, data, replace(cfg.train, seed=cfg.run.seed), device=ctx.device, checkpoint=train_ck,
            spec=spec, resume=True, progress=ctx.progress, desc="baseline")
    metrics = {**model_metrics(ctx, model), "weights": weights}
    save_checkpoint(out, model, spec, data.classes, data.mean, data.std, meta={"stage": "baseline", **metrics})
    train_ck.unlink(missing_ok=True)
    return StageOutcome(outputs=[out], metrics=metrics)


def stage_attention(ctx: StageContext) -> StageOutcome:
    """Insert BAM at every bottleneck and retrain → ``attention.pt`` (skipped when disabled)."""
    cfg, data = ctx.cfg, data_splits(ctx)
    if not cfg.attention.enabled:
        return StageOutcome("skipped", "attention.enabled is false; pruning starts from baseline.pt")
    ck = load_checkpoint(ctx.path(BASELINE_CKPT), device=ctx.device)  # BAM is attached and retrained on the run's device
    model = ck.model
    opts = {"reduction": cfg.attention.reduction, "dilation": cfg.attention.dilation}
    where = attach_bam(model, input_size(ctx), **opts)
    ctx.say(f"BAM attached after: {', '.join(where)}")
    spec = replace(ck.spec, attention=opts)
    if cfg.attention.epochs > 0:
        tc = replace(cfg.train, epochs=cfg.attention.epochs, lr=cfg.attention.lr, schedule="cosine", warmup_epochs=0.0, seed=cfg.run.seed,
                     max_steps_per_epoch=cfg.attention.max_steps_per_epoch or cfg.train.max_steps_per_epoch)
        fit(model, data, tc, device=ctx.device, progress=ctx.progress, desc="attention")
    metrics = {**model_metrics(ctx, model), "bam_after": where}
    out = ctx.path(ATTENTION_CKPT)
    save_checkpoint(out, model, spec, data.classes, data.mean, data.std, meta={"stage": "attention", **metrics})
    return StageOutcome(outputs=[out], metrics=metrics)


def stage_prune(ctx: StageContext) -> StageOutcome:
    """Algorithm 1 with ``prune.criterion.name`` → ``pruned.pt`` + ``history.json``; gates: FLOPs target, accuracy drop."""
    cfg, data = ctx.cfg, data_splits(ctx)
    src = ctx.path(ATTENTION_CKPT) if ctx.path(ATTENTION_CKPT).exists() and cfg.attention.enabled else ctx.path(BASELINE_CKPT)
    ck = load_checkpoint(src, device=ctx.device)
    base_meta = load_checkpoint(ctx.path(BASELINE_CKPT)).meta
    pcfg, target = aim_at_target(cfg.prune, cfg.target)
    pcfg, note = apply_by_alignment(pcfg)  # the settings of the target's channel block (prune.by_alignment)
    if note:
        ctx.say(note)
    criterion = get_criterion(pcfg.criterion.name, **pcfg.criterion.options)
    plain = copy.deepcopy(ck.model)
    detach_bam(plain)
    before = channels_per_layer(plain)  # named as the pruned model's layers are (no BAM wrappers)
    probe = latency_probe(ctx, pcfg, target)
    seed = pcfg.steps.seed if pcfg.steps.seed is not None else cfg.run.seed
    teacher = load_checkpoint(ctx.path(BASELINE_CKPT), device=ctx.device).model if pcfg.recovery.distill.teacher == "baseline" else None
    speed = depth_speed_check(ctx, pcfg, target)
    try:
        result = run_pruning(ck.model, data, criterion, pcfg.updated({"steps.seed": seed}), cfg.train, input_size=input_size(ctx),
                             device=ctx.device, reference_accuracy=float(base_meta.get("val_accuracy", float("nan"))),
                             history_path=ctx.path(HISTORY), progress=ctx.progress, latency=probe, teacher=teacher, speed=speed)
    finally:
        if speed is not None:
            speed.close()
    spec = ck.spec if not (pcfg.recovery.remove_attention and ck.spec.attention) else replace(ck.spec, attention=None)
    if result.dropped_blocks:  # rebuilt with those blocks as identities (ModelSpec.dropped)
        spec = replace(spec, dropped=[*spec.dropped, *result.dropped_blocks])
    metrics = {**model_metrics(ctx, result.model), **result.summary(), "source": src.name, "method": criterion.name}
    out = ctx.path(PRUNED_CKPT)
    save_checkpoint(out, result.model, spec, data.classes, data.mean, data.std, meta={"stage": "prune", **metrics})
    metrics["baseline_accuracy"] = float(base_meta["accuracy"])
    checks = prune_checks(cfg, metrics)
    metrics["history"] = [{k: v for k, v in r.items() if k != "channels"} for r in result.history]
    metrics["prune_config"] = asdict(pcfg)  # what the loop ran: prune.by_alignment applied
    metrics["target"] = {k: v for k, v in target.items() if k != "profile"}
    if note:
        metrics["by_alignment"] = note
    metrics["channels_before"], metrics["channels_after"] = before, channels_per_layer(result.model)
    outputs = [out, ctx.path(HISTORY)] + ([probe.table.cache] if probe is not None and probe.table.cache else [])
    return StageOutcome(outputs=outputs, metrics=metrics, checks=checks)


def prune_checks(cfg: PipelineConfig, metrics: dict[str, Any]) -> list[Check]:
    """The prune stage's gates on its metrics: accuracy drop vs the baseline ≤ ``checks.max_accuracy_drop``; then, with
    ``checks.require_flops_target`` (the prune target must be reached), the timed speedup ≥ ``prune.target.speedup``
    when the loop had a latency target, else the MACs reduction ≥ ``prune.target.flops_reduction``. Re-evaluated alone
    when only a gate setting changes, so a run that stopped just short of its target goes on with
    ``--set checks.require_flops_target=false`` without re-training."""
    checks = [accuracy_drop(float(metrics["baseline_accuracy"]), metrics["accuracy"], cfg.checks.max_accuracy_drop)]
    if not cfg.checks.require_flops_target:
        return checks
    lat = metrics.get("latency") or {}
    if lat.get("target_speedup"):  # a latency target: gate the timed speedup
        checks.append(at_least(f"measured_speedup_b{lat['batch']}", lat["final_speedup"], lat["target_speedup"]))
    else:
        aimed = aim_at_target(cfg.prune, cfg.target)[0]
        checks.append(flops_target(metrics["flops_reduction"], apply_by_alignment(aimed)[0].target.flops_reduction))
    return checks


def aim_at_target(p: PruneConfig, target: Any) -> tuple[PruneConfig, dict[str, Any]]:
    """The prune settings aimed at ``target`` (the config's ``target`` section) and a record of that target. A built-in
    target (``onnxruntime-cpu``, ``openvino-cpu``) becomes ``prune.target.runtime`` when that key is at its default; a
    profile file (``target.json``) sets ``prune.widths.round_to`` (when ``auto``) to the channel block of the staircase the
    device timed for ``target.precision`` and the target runtime to ``device-profile``."""
    from export.runtime import CPU_RUNTIMES

    if target.profile in CPU_RUNTIMES:
        if p.target.runtime == "onnxruntime-cpu":
            p = p.updated({"target.runtime": target.profile})
        return p, {"name": p.target.runtime, "label": f"{p.target.runtime} on this machine", "file": None,
                   "precision": target.precision}
    from export.target_profile import load_profile

    prof = load_profile(target.profile)
    block = prof.block(target.precision)
    if p.widths.round_to == "auto":
        p = p.updated({"widths.round_to": block, "target.runtime": "device-profile"})
    return p, {"name": prof.identity.get("runtime"), "label": prof.label, "file": str(prof.path), "precision": target.precision,
               "block": block, "identity": prof.identity, "profile": prof}


def latency_probe(ctx: StageContext, p: PruneConfig, target: dict[str, Any] | None = None) -> Any:
    """The latency source for ``prune.target.speedup`` / ``prune.target.latency_ms`` / ``prune.steps.allocation=latency`` of
    the effective prune settings ``p`` (None without): the device's profile (:class:`export.target_profile.
    ProfileLatencyProbe`) when ``target`` came from a ``target.json``, else the runtime of this machine timed on the
    fly (:class:`export.layer_latency.RuntimeLatencyProbe`; its per-layer table cached in the run directory)."""
    from ccpcsa.pruning.allocation import NEEDS_LATENCY

    if p.target.speedup is None and p.target.latency_ms is None and p.steps.allocation not in NEEDS_LATENCY:
        return None
    if target is not None and target.get("profile") is not None:
        from export.target_profile import ProfileLatencyProbe

        return ProfileLatencyProbe(target["profile"], target["precision"], p.target.latency_batch, input_size(ctx))
    if target is not None and target.get("precision") == "int8":
        raise UserError("target.precision int8 with a latency target needs the device's INT8 timings: build a probe pack "
                        "(python -m pipeline probe-pack), run target_probe.py and set target.profile to its target.json")
    from ccpcsa.surgery.alignment import resolve_alignment
    from export.layer_latency import RuntimeLatencyProbe

    align, _ = resolve_alignment(p.widths.round_to, p.target.runtime)
    return RuntimeLatencyProbe(p.target.latency_batch, ctx.cfg.export.threads, align, ctx.run_dir, input_size(ctx), progress=ctx.say,
                               runtime=p.target.runtime)


def depth_speed_check(ctx: StageContext, p: PruneConfig, target: dict[str, Any]) -> Any:
    """The timer of ``prune.depth.min_speedup`` and ``prune.depth.price: time`` (None with neither): the device's
    profile (:class:`export.speed_check.ProfileSpeedCheck`) when ``target`` came from a ``target.json``, else the target
    runtime of this machine (:class:`export.speed_check.MeasuredSpeedCheck`) at ``export.latency_batches`` with
    ``export.threads``, FP32 and, when the run exports INT8, INT8; its ``floor`` is the min_speedup (None: none)."""
    if not p.depth.timed:
        return None
    from export.speed_check import MeasuredSpeedCheck, ProfileSpeedCheck

    floor = float(p.depth.min_speedup) if p.depth.min_speedup is not None else None
    if target.get("profile") is not None:
        return ProfileSpeedCheck(floor, target["profile"], input_size(ctx))
    e = ctx.cfg.export
    return MeasuredSpeedCheck(floor, p.target.runtime, e.latency_batches, e.threads, input_size(ctx), int8=e.int8 or e.int8_cpu)
