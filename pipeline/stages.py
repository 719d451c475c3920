"""The ordered stage list of the pipeline and the config sections each depends on."""

from __future__ import annotations

from export.tensorrt.engine_file import TIMING_CACHE, engine_name

from .artifacts import (
    ATTENTION_CKPT,
    BASELINE_CKPT,
    BASELINE_INT8_CPU_ONNX,
    BASELINE_INT8_ONNX,
    BASELINE_ONNX,
    BASELINE_SIM_ONNX,
    BUILD_ENGINE_SH,
    BUNDLE,
    HISTORY,
    MANIFEST,
    MODEL_INT8_CPU_ONNX,
    MODEL_INT8_ONNX,
    MODEL_ONNX,
    MODEL_SIM_ONNX,
    MODEL_STEM,
    PRUNED_CKPT,
    REPORT_JSON,
    REPORT_MD,
    VALIDATION,
)
from .bundle import bundle_inputs, stage_bundle
from .orchestrate import Stage
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
# ``checks.eval_images`` picks the test sample every stage's accuracy is computed on, so it keys them all.
# Each export stage is keyed by the gates it evaluates (a new INT8 agreement threshold re-quantizes, it does not
# re-export the FP32 file); the engine stage gates FP16 and INT8 engines and the FP32 parity.
_ACCURACY = ("checks.max_accuracy_drop", "checks.eval_images")
_FP32 = ("checks.max_abs_diff", "checks.min_agreement_fp32", *_ACCURACY)
_INT8 = ("checks.min_agreement_int8", *_ACCURACY)
_PARITY = (*_FP32, "checks.min_agreement_lowp", "checks.min_agreement_int8")

#: The engines the engine stage builds, as listed (one per ``export.engine_precisions``).
_ENGINES = engine_name(MODEL_STEM, "<prec>")

STAGES: list[Stage] = [
    Stage("baseline", stage_baseline, ("run", "model", "data", "train", "baseline", "checks.eval_images"), "train or load the model",
          outputs=(BASELINE_CKPT,), external=baseline_inputs),
    Stage("attention", stage_attention, ("attention", "checks.eval_images"), "attach BAM, retrain", inputs=(BASELINE_CKPT,),
          outputs=(ATTENTION_CKPT,)),
    # Its gates are re-evaluated on the recorded metrics when only they change: no re-training for a new threshold.
    Stage("prune", stage_prune, ("prune", "export.threads", "checks.eval_images", "target.profile", "target.precision"),
          "CCPCSA loop (any criterion)", inputs=(BASELINE_CKPT, ATTENTION_CKPT), outputs=(PRUNED_CKPT, HISTORY),
          gates=("checks.max_accuracy_drop", "checks.require_flops_target"), regate=prune_checks),
    Stage("onnx", stage_onnx, ("export.opset", *_FP32), "export ONNX, parity vs PyTorch", inputs=(PRUNED_CKPT,),
          outputs=(MODEL_ONNX,)),
    Stage("simplify", stage_simplify, ("export.simplify", *_FP32), "onnxsim", inputs=(MODEL_ONNX,), outputs=(MODEL_SIM_ONNX,)),
    Stage("int8", stage_int8, ("export.int8", "export.calibration_images", *_INT8), "INT8 QDQ for TensorRT (S8S8)",
          inputs=(MODEL_SIM_ONNX, MODEL_ONNX), outputs=(MODEL_INT8_ONNX,)),
    Stage("int8_cpu", stage_int8_cpu, ("export.int8_cpu", "export.int8_reduce_range", "export.calibration_images", "target.profile",
                                         *_INT8),
          "INT8 QDQ for onnxruntime CPU (U8S8)", inputs=(MODEL_SIM_ONNX, MODEL_ONNX), outputs=(MODEL_INT8_CPU_ONNX,)),
    Stage("engine", stage_engine, ("export", *_PARITY), "TensorRT engines (skipped without TensorRT/GPU)",
          inputs=(MODEL_SIM_ONNX, MODEL_ONNX, MODEL_INT8_ONNX), outputs=(_ENGINES, BUILD_ENGINE_SH, TIMING_CACHE)),
    Stage("validate", stage_validate, ("export", "checks", "target.runtimes"), "accuracy, parity, latency of every format; speedup gate",
          inputs=(BASELINE_CKPT, PRUNED_CKPT, MODEL_ONNX, MODEL_SIM_ONNX, MODEL_INT8_ONNX, MODEL_INT8_CPU_ONNX),
          outputs=(VALIDATION, BASELINE_ONNX, BASELINE_SIM_ONNX, BASELINE_INT8_ONNX, BASELINE_INT8_CPU_ONNX)),
    Stage("report", stage_report, ("report",), "the run's report (with a placed frontier.md: its section)", inputs=(MANIFEST,),
          outputs=(REPORT_JSON, REPORT_MD, "plots/")),
    Stage("bundle", stage_bundle, (), "for the edge device (models, promise.json, on-device scripts)",
          inputs=(MANIFEST, MODEL_SIM_ONNX, MODEL_ONNX, MODEL_INT8_ONNX, MODEL_INT8_CPU_ONNX, BUILD_ENGINE_SH, BASELINE_SIM_ONNX,
                  BASELINE_ONNX, BASELINE_INT8_ONNX, BASELINE_INT8_CPU_ONNX),
          outputs=(BUNDLE,), external=bundle_inputs),
]
