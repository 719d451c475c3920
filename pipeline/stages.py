"""The ordered stage list of the pipeline and the config sections each depends on."""

from __future__ import annotations

from .bundle import bundle_inputs, stage_bundle
from .runner import Stage
from .stages_export import (
    stage_engine,
    stage_int8,
    stage_int8_cpu,
    stage_onnx,
    stage_report,
    stage_simplify,
)
from .stages_train import (
    baseline_inputs,
    prune_checks,
    stage_attention,
    stage_baseline,
    stage_prune,
)
from .stages_validate import stage_validate

# Gates a stage evaluates: changing one re-runs that stage (and everything after it), nothing earlier — except the
# prune stage, whose work is kept and only its checks re-evaluated (Stage.gates / Stage.regate).
# ``checks.eval_images`` picks the test sample every stage's accuracy is measured on, so it keys them all.
# Each export stage is keyed by the gates it evaluates (a new INT8 agreement threshold re-quantizes, it does not
# re-export the FP32 file); the engine stage gates FP16 and INT8 engines and the FP32 parity.
_ACCURACY = ("checks.max_accuracy_drop", "checks.eval_images")
_FP32 = ("checks.max_abs_diff", "checks.min_agreement_fp32", *_ACCURACY)
_INT8 = ("checks.min_agreement_int8", *_ACCURACY)
_PARITY = (*_FP32, "checks.min_agreement_lowp", "checks.min_agreement_int8")

STAGES: list[Stage] = [
    Stage("baseline", stage_baseline, ("run", "model", "data", "train", "baseline", "checks.eval_images"), "train or load the model → baseline.pt",
          external=baseline_inputs),
    Stage("attention", stage_attention, ("attention", "checks.eval_images"), "attach BAM, retrain → attention.pt"),
    # Its gates are re-evaluated on the recorded metrics when only they change: no re-training for a new threshold.
    Stage("prune", stage_prune, ("prune", "export.threads", "checks.eval_images", "target.profile", "target.precision"),
          "CCPCSA loop (any criterion) → pruned.pt, history.json",
          gates=("checks.max_accuracy_drop", "checks.require_flops_target"), regate=prune_checks),
    Stage("onnx", stage_onnx, ("export.opset", *_FP32), "export ONNX, parity vs PyTorch → model.onnx"),
    Stage("simplify", stage_simplify, ("export.simplify", *_FP32), "onnxsim → model.sim.onnx"),
    Stage("int8", stage_int8, ("export.int8", "export.calibration_images", *_INT8), "INT8 QDQ for TensorRT (S8S8) → model.int8.onnx"),
    Stage("int8_cpu", stage_int8_cpu, ("export.int8_cpu", "export.int8_reduce_range", "export.calibration_images", "target.profile",
                                         *_INT8),
          "INT8 QDQ for onnxruntime CPU (U8S8) → model.int8.cpu.onnx"),
    Stage("engine", stage_engine, ("export", *_PARITY), "TensorRT engines (skipped without TensorRT/GPU) → model.<prec>.engine"),
    Stage("validate", stage_validate, ("export", "checks", "target.runtimes"), "accuracy, parity, latency of every format; speedup gate"),
    Stage("report", stage_report, ("report",), "report.json, report.md, plots/ (with a placed frontier.md: its section)"),
    Stage("bundle", stage_bundle, (), "bundle.tar.gz for the edge device (models, promise.json, on-device scripts)",
          external=bundle_inputs),
]
