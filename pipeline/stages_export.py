"""Export-side stages: ``onnx`` → ``simplify`` → ``int8`` → ``engine`` → ``validate`` → ``report`` → ``bundle``.

Parity at each stage is checked against the previous stage's artifact on the evaluation split
(FP32: max |Δlogit| and top-1 agreement; INT8/FP16: agreement); accuracy against the baseline. Those are the
cheap intermediate gates (``checks.eval_images``'s seeded sample); ``validate`` then evaluates every final
format on the whole test split (``checks.final_eval_images``) — the accuracies the report states, each with
its image count and standard error.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ccpcsa.data import ArrayDataset, normalize_batch
from ccpcsa.io.checkpoint import load_checkpoint

from .accuracy import accuracy_record
from .artifacts import (
    BASELINE_CKPT,
    BASELINE_INT8_ONNX,
    BASELINE_ONNX,
    BASELINE_SIM_ONNX,
    BASELINE_STEM,
    BUILD_ENGINE_SH,
    MODEL_INT8_CPU_ONNX,
    MODEL_INT8_ONNX,
    MODEL_ONNX,
    MODEL_SIM_ONNX,
    MODEL_STEM,
    PRUNED_CKPT,
    REPORT_JSON,
)
from .checks import accuracy_drop, parity
from .orchestrate import StageContext, StageOutcome
from .report import format_table, load_manifest, write_report
from .stages_train import data_splits, eval_split, evaluation_sample, input_size

if TYPE_CHECKING:
    from torch import nn


def eval_arrays(ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
    """Normalized float32 NCHW images and labels of the evaluation split (cached per process)."""
    if "eval" not in ctx.cache:
        data, split = data_splits(ctx), eval_split(ctx)
        ctx.cache["eval"] = (normalize_batch(split.images, data.mean, data.std).numpy(), split.labels)
    return ctx.cache["eval"]


def calibration_images(data: Any, n: int, seed: int) -> np.ndarray:
    """``n`` train images of ``data`` (a seeded sample), normalized like the model input: INT8 calibration."""
    return normalize_batch(data.train.sample(n, seed=seed).images, data.mean, data.std).numpy()


def calibration_array(ctx: StageContext, n: int) -> np.ndarray:
    """The run's calibration images: :func:`calibration_images` seeded with ``run.seed``."""
    return calibration_images(data_splits(ctx), n, ctx.cfg.run.seed)


def _metadata(ctx: StageContext, precision: str = "fp32") -> Any:
    from export.metadata import DeployMetadata

    data = data_splits(ctx)
    return DeployMetadata(class_names=data.classes, mean=data.mean, std=data.std, input_size=input_size(ctx),
                          run_id=ctx.cfg.run.name, config_hash=ctx.cfg.section_hash())


def _runner(ctx: StageContext, what: str | Path, *, simulate_tensorrt: bool = False) -> Any:
    """A Torch runner for a checkpoint, a TensorRT runner for an engine, a plain onnxruntime CPU session for an ONNX
    file. ``simulate_tensorrt``: the TensorRT INT8 flavour with graph optimizations off, so its Q/DQ pairs run as
    float operations — what TensorRT computes, for the int8 stage's gate on a machine without TensorRT (labelled so
    in its metrics; never reported as the file's accuracy on onnxruntime)."""
    from export.runtime import OrtRunner, TorchRunner

    p = Path(what)
    if p.suffix == ".engine":
        from export.tensorrt import TrtRunner

        return TrtRunner(p)
    if p.suffix == ".pt":
        return TorchRunner(load_checkpoint(p).model, input_size=input_size(ctx), device=str(ctx.device), threads=ctx.cfg.export.threads)
    from export.quantize import tensorrt_flavour

    return OrtRunner(p, threads=ctx.cfg.export.threads, graph_optimization=not (simulate_tensorrt and tensorrt_flavour(p)))


def _compare(ctx: StageContext, ref: str | Path, new: str | Path) -> dict[str, Any]:
    """max/mean |Δlogit|, top-1 agreement and both accuracies (percent) on the evaluation split."""
    from export.compare import compare_runners

    x, y = eval_arrays(ctx)
    c = compare_runners(_runner(ctx, ref), _runner(ctx, new, simulate_tensorrt=True), x, y, batch_size=250)
    return {"max_abs_diff": c.max_abs_diff, "mean_abs_diff": c.mean_abs_diff, "top1_agreement": c.top1_agreement_pct,
            "accuracy_a": c.accuracy_a_pct, "accuracy_b": c.accuracy_b_pct, "logit_scale": c.logit_scale}


def final_split(ctx: StageContext) -> ArrayDataset:
    """The test images every final format is evaluated on in ``validate``: the whole test split by default
    (``checks.final_eval_images`` null), else that many of :func:`evaluation_sample`'s fixed seeded sample."""
    return evaluation_sample(data_splits(ctx).test, ctx.cfg.checks.final_eval_images)


def final_accuracy(ctx: StageContext, runner: Any, chunk: int = 1000) -> dict[str, Any]:
    """Top-1 accuracy of ``runner`` on :func:`final_split` → ``{"accuracy", "accuracy_n", "accuracy_se"}``
    (percent, image count, standard error in pp). Images are normalized ``chunk`` at a time, so a large test
    split is never held as float32 all at once."""
    from export.compare import run_batched

    data, split = data_splits(ctx), final_split(ctx)
    correct = 0
    for i in range(0, len(split), chunk):
        x = normalize_batch(split.images[i : i + chunk], data.mean, data.std).numpy()
        correct += int((run_batched(runner, x, 250).argmax(1) == split.labels[i : i + chunk]).sum())
    return accuracy_record(100.0 * correct / len(split), len(split))


def final_accuracy_checks(rows: dict[str, Any], max_drop: float) -> list[Any]:
    """The final accuracy gates: every evaluated format's drop against the baseline evaluated on the same images
    in the same stage (``<format>_accuracy_drop_pp`` ≤ ``max_drop``). The intermediate stages gate on the cheap
    sample (``checks.eval_images``); this re-checks the numbers the report states. A row with ``gated`` false (a file on
    a runtime it is not made for: the TensorRT flavour on a CPU runtime) is reported, not gated."""
    base = (rows.get("pytorch_baseline") or {}).get("accuracy")
    if base is None:
        return []
    return [replace(accuracy_drop(base, r["accuracy"], max_drop), name=f"{name}_accuracy_drop_pp")
            for name, r in rows.items()
            if name != "pytorch_baseline" and r.get("status") == "ok" and r.get("accuracy") is not None and r.get("gated", True)]


def _parity_checks(ctx: StageContext, ref: Path, new: str | Path, precision: str) -> tuple[dict[str, Any], list[Any]]:
    """Compare ``new`` with ``ref`` on the evaluation split → (metrics, checks): parity for ``precision``
    (fp32: max |Δlogit| + agreement; fp16: ``checks.min_agreement_lowp``; int8: ``checks.min_agreement_int8``)
    and the accuracy drop against the baseline."""
    cmp = _compare(ctx, ref, new)
    c = ctx.cfg.checks
    base = load_checkpoint(ctx.path(BASELINE_CKPT)).meta
    checks = parity(cmp["max_abs_diff"], cmp["top1_agreement"], fp32=precision == "fp32", max_diff=c.max_abs_diff,
                    min_agree_fp32=c.min_agreement_fp32,
                    min_agree_lowp=c.min_agreement_int8 if precision == "int8" else c.min_agreement_lowp,
                    logit_scale=cmp["logit_scale"])
    checks.append(accuracy_drop(float(base["accuracy"]), cmp["accuracy_b"], c.max_accuracy_drop))
    metrics = {**accuracy_record(cmp["accuracy_b"], len(eval_arrays(ctx)[1])), "max_abs_diff": cmp["max_abs_diff"],
               "mean_abs_diff": cmp["mean_abs_diff"], "top1_agreement": cmp["top1_agreement"], "parity_vs": Path(ref).name,
               "logit_scale": cmp["logit_scale"]}
    return metrics, checks


def _parity_outcome(ctx: StageContext, out: Path, ref: Path, precision: str, extra: dict[str, Any]) -> StageOutcome:
    metrics, checks = _parity_checks(ctx, ref, out, precision)
    return StageOutcome(outputs=[out], metrics={**metrics, "size_bytes": out.stat().st_size, **extra}, checks=checks)


def stage_onnx(ctx: StageContext) -> StageOutcome:
    """Export the pruned model → ``model.onnx`` (dynamic batch, metadata); parity vs PyTorch."""
    from export.onnx_export import export_onnx

    src = ctx.path(PRUNED_CKPT)
    ck = load_checkpoint(src)
    out = ctx.path(MODEL_ONNX)
    res = export_onnx(ck.model, out, _metadata(ctx), opset=ctx.cfg.export.opset)
    return _parity_outcome(ctx, out, src, "fp32", {"nodes": res.nodes, "opset": res.opset, "exporter": res.exporter})


def stage_simplify(ctx: StageContext) -> StageOutcome:
    """onnxsim with its numeric check → ``model.sim.onnx``; parity vs ``model.onnx``."""
    if not ctx.cfg.export.simplify:
        return StageOutcome("skipped", "export.simplify is false")
    from export.simplify import simplify_onnx

    out = ctx.path(MODEL_SIM_ONNX)
    res = simplify_onnx(ctx.path(MODEL_ONNX), out)
    return _parity_outcome(ctx, out, ctx.path(MODEL_ONNX), "fp32", {"nodes_before": res.nodes_before, "nodes_after": res.nodes_after})


def _fp32_onnx(ctx: StageContext) -> Path:
    sim = ctx.path(MODEL_SIM_ONNX)
    return sim if ctx.cfg.export.simplify and sim.exists() else ctx.path(MODEL_ONNX)


def baseline_fp32_name(ctx: StageContext) -> str:
    """The unpruned FP32 reference's file name: ``baseline.sim.onnx`` when the deployed FP32 file is simplified, else
    ``baseline.onnx``."""
    return BASELINE_SIM_ONNX if _fp32_onnx(ctx).name == MODEL_SIM_ONNX else BASELINE_ONNX


def reference_onnx(ctx: StageContext, model: nn.Module) -> list[Path]:
    """The unpruned model through the pruned model's export path, the reference every speedup is timed against:
    ``baseline.onnx`` (same exporter, opset and metadata as ``model.onnx``) and, when the pruned FP32 artifact is the
    onnxsim-simplified one, ``baseline.sim.onnx`` — so a speedup never credits what the simplifier did to pruning —
    and, where ``model.int8.onnx`` exists, ``baseline.int8.onnx`` (:func:`_trt_reference`) for the device's TensorRT
    reference engine. Returns the files written, the FP32 reference last."""
    from export.onnx_export import export_onnx
    from export.simplify import simplify_onnx

    base_onnx = ctx.path(BASELINE_ONNX)
    export_onnx(model, base_onnx, _metadata(ctx), opset=ctx.cfg.export.opset)
    if _fp32_onnx(ctx).name != MODEL_SIM_ONNX:
        return [*_trt_reference(ctx, base_onnx), base_onnx]
    base_sim = ctx.path(BASELINE_SIM_ONNX)
    simplify_onnx(base_onnx, base_sim)
    return [base_onnx, *_trt_reference(ctx, base_sim), base_sim]


def _trt_reference(ctx: StageContext, base_fp32: Path) -> list[Path]:
    """``baseline.int8.onnx``: the unpruned model quantized exactly as ``model.int8.onnx`` was (TensorRT flavour, the
    same calibration images), when that file exists — the device builds ``baseline.int8.engine`` from it."""
    if not ctx.path(MODEL_INT8_ONNX).exists():
        return []
    out = ctx.path(BASELINE_INT8_ONNX)
    quantize_trt_flavour(ctx, base_fp32, out)
    return [out]


def cpu_reduce_range(ctx: StageContext) -> tuple[bool, str]:
    """``export.int8_reduce_range`` resolved for the target: the device's CPU features when ``target.profile`` is a
    ``target.json`` from the device (7-bit weights on an x86 device without VNNI), else this machine's."""
    from export.quantize import resolve_reduce_range
    from export.runtime import CPU_RUNTIMES

    if ctx.cfg.target.profile in CPU_RUNTIMES:
        return resolve_reduce_range(ctx.cfg.export.int8_reduce_range)
    from export.target_profile import load_profile

    ident = load_profile(ctx.cfg.target.profile).identity
    return resolve_reduce_range(ctx.cfg.export.int8_reduce_range, frozenset(ident.get("simd") or []), ident.get("machine"))


def quantize_trt_flavour(ctx: StageContext, src: Path, out: Path) -> Any:
    """The TensorRT INT8 flavour (S8S8, ModelOpt's Q/DQ placement) of ``src`` at ``out`` on ``export.calibration_images``
    of the run's calibration images — one recipe for the pruned model and its unpruned reference."""
    from export.quantize import quantize_int8

    n = ctx.cfg.export.calibration_images
    return quantize_int8(src, out, calibration_array(ctx, n), num_calibration=n, activations="int8")


def quantize_cpu_flavour(ctx: StageContext, src: Path, out: Path) -> Any:
    """The onnxruntime-CPU INT8 flavour (U8S8) of ``src`` at ``out``, with 7-bit weights where
    ``export.int8_reduce_range`` says so (``auto``: x86 CPUs without VNNI, the target's: :func:`cpu_reduce_range`) —
    one recipe for the pruned model and the unpruned reference it is timed against."""
    from export.quantize import quantize_int8

    n = ctx.cfg.export.calibration_images
    reduce, _ = cpu_reduce_range(ctx)
    return quantize_int8(src, out, calibration_array(ctx, n), num_calibration=n, activations="uint8", reduce_range=reduce)


def _quantize(ctx: StageContext, out: Path, activations: str) -> StageOutcome:
    src = _fp32_onnx(ctx)
    extra: dict[str, Any] = {}
    if activations == "uint8":
        res = quantize_cpu_flavour(ctx, src, out)
        extra["reduce_range_reason"] = cpu_reduce_range(ctx)[1]
    else:
        res = quantize_trt_flavour(ctx, src, out)
        extra["evaluated_as"] = ("simulated TensorRT: QDQ as float operations on onnxruntime with graph optimizations off; "
                                 "validate measures the file on each runtime with plain sessions")
    return _parity_outcome(ctx, out, src, "int8", {"nodes": res.nodes, "calibration_images": res.num_calibration,
                                                   "activations": res.activations, "reduce_range": res.reduce_range,
                                                   "op_counts": res.op_counts, **extra})


def stage_int8(ctx: StageContext) -> StageOutcome:
    """Static INT8 QDQ quantization for TensorRT (signed symmetric activations, S8S8) → ``model.int8.onnx``;
    agreement vs FP32 ONNX (``checks.min_agreement_int8``)."""
    if not ctx.cfg.export.int8:
        return StageOutcome("skipped", "export.int8 is false")
    return _quantize(ctx, ctx.path(MODEL_INT8_ONNX), "int8")


def stage_int8_cpu(ctx: StageContext) -> StageOutcome:
    """Static INT8 QDQ quantization for onnxruntime CPU (unsigned asymmetric activations, U8S8: every convolution
    fuses into ``QLinearConv``) → ``model.int8.cpu.onnx``; agreement vs FP32 ONNX (``checks.min_agreement_int8``)."""
    if not ctx.cfg.export.int8_cpu:
        return StageOutcome("skipped", "export.int8_cpu is false")
    return _quantize(ctx, ctx.path(MODEL_INT8_CPU_ONNX), "uint8")


def stage_engine(ctx: StageContext) -> StageOutcome:
    """TensorRT engines per ``export.engine_precisions`` (+ sidecars, trtexec lines); ``skipped`` without TensorRT/GPU."""
    from export.tensorrt import (
        TIMING_CACHE,
        BatchProfile,
        build_engine,
        engine_name,
        trtexec_commands,
        write_trtexec_script,
    )

    e = ctx.cfg.export
    s = input_size(ctx)
    profile = BatchProfile(e.min_batch, e.opt_batch, e.max_batch)
    int8 = ctx.path(MODEL_INT8_ONNX)
    cmds = trtexec_commands(_fp32_onnx(ctx).name, int8.name if int8.exists() else None, profile=profile, input_chw=(3, s, s),
                            workspace_mb=e.workspace_mb)
    # the unpruned references (validate writes their ONNX files; the bundle carries them): the device times each engine
    # against the unpruned model's engine of the same precision
    base = trtexec_commands(baseline_fp32_name(ctx), BASELINE_INT8_ONNX if int8.exists() else None, profile=profile,
                            input_chw=(3, s, s), workspace_mb=e.workspace_mb, stem=BASELINE_STEM)
    cmds.update({f"{k}, unpruned reference": v for k, v in base.items()})
    script = write_trtexec_script(ctx.path(BUILD_ENGINE_SH), cmds)
    if not e.engine:
        return StageOutcome("skipped", "export.engine is false", outputs=[script])
    outputs, metrics, reasons, checks = [script], {}, [], []
    for prec in e.engine_precisions:
        src = int8 if prec == "int8" else _fp32_onnx(ctx)
        if prec == "int8" and not int8.exists():
            metrics[prec] = {"status": "skipped", "reason": "no INT8 QDQ model (export.int8 is false)"}
            continue
        res = build_engine(src, ctx.path(engine_name(MODEL_STEM, prec)), precision=prec, profile=profile, workspace_mb=e.workspace_mb,
                           timing_cache=ctx.path(TIMING_CACHE))
        metrics[prec] = res.to_dict()
        if res.status != "ok":
            reasons.append(f"{prec}: {res.reason}")
        outputs += [p for p in (res.engine_path, res.sidecar_path) if p is not None and Path(p).exists()]
        if res.ok and res.engine_path is not None:
            # Parity of the engine against the FP32 ONNX model it was built from (FP16/INT8 agreement gates).
            par, engine_checks = _parity_checks(ctx, _fp32_onnx(ctx), res.engine_path, prec)
            metrics[prec]["parity"] = par
            checks += [replace(ch, name=f"{prec}_engine_{ch.name}") for ch in engine_checks]
    statuses = {m["status"] for m in metrics.values()}
    if statuses == {"skipped"}:
        return StageOutcome("skipped", reasons[0].split(": ", 1)[1] if reasons else "", outputs=outputs, metrics=metrics)
    if "failed" in statuses:
        return StageOutcome("failed", "; ".join(reasons), outputs=outputs, metrics=metrics, checks=checks)
    return StageOutcome(outputs=outputs, metrics=metrics, checks=checks)


def stage_report(ctx: StageContext) -> StageOutcome:
    """report.json, report.md and plots from the manifest; prints the per-format table."""
    paths = write_report(ctx.run_dir, load_manifest(ctx.run_dir))
    report = json.loads(ctx.path(REPORT_JSON).read_text())
    print(format_table(report), flush=True)
    return StageOutcome(outputs=paths)

