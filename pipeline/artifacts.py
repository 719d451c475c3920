"""The file names of a run directory (``runs/<name>/``) and of the edge bundle: one spelling each.

Every stage reads and writes its files under these names (:data:`pipeline.stages.STAGES` declares which it reads and
writes); the benchmarks read a finished run through them. The bundle's on-device scripts (``export/edge/``) run
without this project and spell the bundle members they read (``labels.json``, ``promise.json``, the model files)
themselves.
"""

from __future__ import annotations

# Checkpoints (PyTorch): the trained model, BAM attached and retrained, the pruned model and its history.
BASELINE_CKPT = "baseline.pt"
BASELINE_TRAIN_CKPT = "baseline.train.pt"  #: the baseline's resumable training checkpoint (keyed: see :func:`train_ckpt`)
ATTENTION_CKPT = "attention.pt"
PRUNED_CKPT = "pruned.pt"
HISTORY = "history.json"  #: the pruning loop's per-step record

# The pruned model's ONNX files.
MODEL_ONNX = "model.onnx"
MODEL_SIM_ONNX = "model.sim.onnx"  #: onnxsim-simplified
MODEL_INT8_ONNX = "model.int8.onnx"  #: INT8 QDQ S8S8, for TensorRT only
MODEL_INT8_CPU_ONNX = "model.int8.cpu.onnx"  #: INT8 QDQ U8S8, for onnxruntime / OpenVINO on a CPU

# The unpruned references, exported and quantized exactly as the pruned files (every speedup is timed against them).
BASELINE_ONNX = "baseline.onnx"
BASELINE_SIM_ONNX = "baseline.sim.onnx"
BASELINE_INT8_ONNX = "baseline.int8.onnx"  #: TensorRT flavour: the device builds ``baseline.int8.engine`` from it
BASELINE_INT8_CPU_ONNX = "baseline.int8.cpu.onnx"

# TensorRT: the engines' names are ``export.tensorrt``'s (:func:`~export.tensorrt.engine_file.engine_name`:
# ``<stem>.<precision>.engine``, and its ``TIMING_CACHE``; importing ``export`` here would load torch for every
# reader of a manifest).
MODEL_STEM = "model"  #: ``model.fp16.engine``, ``model.int8.engine``
BASELINE_STEM = "baseline"  #: the unpruned reference engines built on the device
BUILD_ENGINE_SH = "build_engine.sh"  #: the ``trtexec`` lines that build the engines on the device

# Results of a run.
VALIDATION = "validation.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FRONTIER_SECTION = "frontier.md"  #: the optional report section `python -m bench.frontier place` writes
FRONTIER_PLOT = "plots/frontier.png"
MANIFEST = "manifest.json"
BUNDLE = "bundle.tar.gz"

# Members of the bundle (besides the model files above and the on-device scripts).
LABELS = "labels.json"
PROMISE = "promise.json"
BUNDLE_README = "README.md"


def train_ckpt(key: str | None) -> str:
    """The baseline's training checkpoint for the stage key ``key``: ``baseline.train.<key[:16]>.pt`` (a changed
    config never resumes another config's training), ``baseline.train.pt`` without a key."""
    stem, _, suffix = BASELINE_TRAIN_CKPT.rpartition(".")
    return f"{stem}.{key[:16]}.{suffix}" if key else BASELINE_TRAIN_CKPT


def train_ckpt_glob() -> str:
    """The glob every :func:`train_ckpt` name matches (``baseline.train*.pt``): leftovers of other configs."""
    stem, _, suffix = BASELINE_TRAIN_CKPT.rpartition(".")
    return f"{stem}*.{suffix}"
