"""What the speed presets of the criteria benchmark measure here, beside the pipeline runs (:mod:`bench.criteria`):
the unpruned model in every format (:func:`measure_reference`) and onnxruntime's per-node profile of it and of every
pruned run (:func:`measure_speed`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, export_formats
from bench.criteria_presets import BATCHES, Preset
from bench.ort_profile import profile_models
from pipeline.artifacts import BASELINE_CKPT, MODEL_INT8_CPU_ONNX, MODEL_SIM_ONNX


def _eval_and_calibration(p: Preset, n_calib: int) -> tuple[Any, Any, Any, Any]:
    """(normalized eval images, labels, calibration images, data) exactly as the pipeline's stages pick them."""

    from ccpcsa.data import load_data, normalize_batch
    from pipeline.config import load_config
    from pipeline.stages_export import calibration_images
    from pipeline.stages_train import evaluation_sample

    data = load_data(p.data, progress=False)
    test = evaluation_sample(data.test, p.eval_images)
    x = normalize_batch(test.images, data.mean, data.std).numpy()
    return x, test.labels, calibration_images(data, n_calib, load_config(ROOT / p.config).run.seed), data


def measure_reference(p: Preset, shared: Path, work: Path) -> dict[str, Any]:
    """The unpruned baseline in every format, same harness and threads as ``validate``: PyTorch eager,
    ORT FP32 (simplified ONNX) and ORT INT8 (QDQ, both flavours) — the pipeline never quantizes the unpruned model."""
    import torch

    from ccpcsa.io.checkpoint import load_checkpoint
    from export.compare import run_batched
    from export.latency import measure_latency
    from export.metadata import DeployMetadata
    from export.runtime import OrtRunner, TorchRunner

    torch.set_num_threads(p.threads)
    x, y, calib, data = _eval_and_calibration(p, p.calibration_images)
    ck = load_checkpoint(shared / BASELINE_CKPT)
    meta = DeployMetadata(class_names=data.classes, mean=data.mean, std=data.std, input_size=ck.spec.input_size, run_id="bench-reference")
    written = export_formats(ck.model, work, "baseline", meta, calib)
    sim_p = written["fp32"]
    files = {f"ort_{k}": f for k, f in written.items()}
    out: dict[str, Any] = {}
    for name, runner in (("pytorch_fp32", TorchRunner(ck.model, input_size=ck.spec.input_size, threads=p.threads)),
                         *((k, OrtRunner(f, threads=p.threads)) for k, f in files.items())):
        rep = measure_latency(runner, batch_sizes=BATCHES, warmup=p.latency_warmup, iters=p.latency_iters)
        acc = float(100.0 * (run_batched(runner, x, 250).argmax(1) == y).mean())
        out[name] = {"accuracy": acc, "latency_ms": {str(r.batch_size): {"p50": r.p50_ms, "p95": r.p95_ms} for r in rep.results},
                     "images_per_s": {str(r.batch_size): r.images_per_s for r in rep.results},
                     "size_bytes": files.get(name, sim_p).stat().st_size}
    out["files"] = {k: str(f) for k, f in written.items()}
    return out


def measure_speed(p: Preset, shared: Path, root: Path, result: dict[str, Any]) -> None:
    """The unpruned model in every format, and onnxruntime's per-node profile of it and of every pruned run (FP32 and
    INT8 U8S8), into ``result`` (``reference``, ``profile``); failures are recorded in ``result["errors"]``."""
    print("measuring the unpruned reference in every format and profiling on onnxruntime …", flush=True)
    errors: dict[str, str] = {}
    try:
        result["reference"] = measure_reference(p, shared, root / "_reference")
    except Exception as exc:  # a measurement failure must not lose the runs' results
        errors["reference"] = f"{type(exc).__name__}: {exc}"
        result["reference"] = {}
    models = {"unpruned": result["reference"].pop("files")} if "files" in result["reference"] else {}
    for row in result["runs"]:
        if row.get("status") == "ok":
            d = ROOT / row["run_dir"]
            models[row["key"]] = {"fp32": str(d / MODEL_SIM_ONNX), "int8_cpu": str(d / MODEL_INT8_CPU_ONNX)}
    try:
        result["profile"] = profile_models(models, threads=p.threads, iters=p.profile_iters, batches=BATCHES)
    except Exception as exc:
        errors["profile"] = f"{type(exc).__name__}: {exc}"
    for k, v in errors.items():
        print(f"warning: {k} failed: {v}", file=sys.stderr, flush=True)
    result["errors"] = errors
