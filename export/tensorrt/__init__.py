"""TensorRT (API >= 10) engines from ONNX: build, sidecar, version/GPU check, runner, trtexec lines.

TensorRT and pycuda are imported lazily, inside functions, so this module imports (and
:func:`trtexec_commands` / :func:`check_sidecar` work) on machines without them. Without
TensorRT or a CUDA GPU, :func:`build_engine` returns ``status="skipped"`` with the reason.

Engine build:

* explicit-batch network (the only kind in TensorRT 10: ``create_network(0)``) filled by the
  ONNX parser; parser errors are reported verbatim;
* one optimization profile ``min/opt/max`` over the batch axis, C/H/W fixed;
* precision ``fp32``, ``fp16`` (``BuilderFlag.FP16``) or ``int8`` from a QDQ model: explicit
  quantization, the Q/DQ nodes decide what runs in INT8; ``FP16`` is also allowed so layers left
  unquantized (e.g. the classifier tail) need not run in FP32. These builder flags are deprecated
  from TensorRT 10.12 in favour of strongly typed networks but work throughout 10.x, which is what
  Jetson JetPack 6 ships (10.3);
* a workspace memory-pool limit and a timing cache file (reused and updated across builds).

Artifacts: ``<name>.engine`` and the sidecar ``<name>.engine.json`` (TensorRT version, GPU,
compute capability, precision, profile shapes, ONNX source and its SHA-256, deployment metadata).
A serialized engine only runs with the TensorRT version and GPU model that built it, so loading
checks the sidecar first (:func:`check_sidecar`, a pure function).

Modules: :mod:`.engine_file` (precisions, batch profile, result, sidecar and its check, TensorRT/GPU lookup),
:mod:`.build` (:func:`build_engine`, ``trtexec`` lines), :mod:`.runner` (:class:`TrtRunner`). The names below are
the package's interface.
"""

from __future__ import annotations

from .build import build_engine, trtexec_commands, write_trtexec_script
from .engine_file import (
    MIN_TRT_MAJOR,
    PRECISIONS,
    SIDECAR_FORMAT,
    TIMING_CACHE,
    BatchProfile,
    EngineResult,
    Status,
    check_sidecar,
    engine_name,
    gpu_info,
    load_sidecar,
    sidecar_path_for,
    tensorrt_unavailable_reason,
)
from .runner import TrtRunner

__all__ = [
    "MIN_TRT_MAJOR",
    "PRECISIONS",
    "SIDECAR_FORMAT",
    "TIMING_CACHE",
    "BatchProfile",
    "EngineResult",
    "Status",
    "TrtRunner",
    "build_engine",
    "check_sidecar",
    "engine_name",
    "gpu_info",
    "load_sidecar",
    "sidecar_path_for",
    "tensorrt_unavailable_reason",
    "trtexec_commands",
    "write_trtexec_script",
]
