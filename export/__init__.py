"""Deployment export: PyTorch → ONNX → onnxsim → INT8 QDQ → TensorRT, with parity and latency checks.

Modules: :mod:`.onnx_export` (export), :mod:`.metadata` (self-describing artifacts),
:mod:`.simplify`, :mod:`.quantize`, :mod:`.tensorrt` (engines, runner, trtexec lines; TensorRT
imported lazily), :mod:`.runtime` (runners), :mod:`.latency`, :mod:`.compare`.
"""

from .compare import Comparison, compare_logits, compare_runners
from .latency import LatencyReport, LatencyStats, measure_latency
from .metadata import DeployMetadata, config_hash, read_metadata
from .onnx_export import OnnxExportResult, export_onnx
from .onnx_io import load_onnx
from .quantize import QuantizeResult, quantize_int8
from .runtime import OrtRunner, Runner, RunnerInfo, TorchRunner, validate_batch
from .simplify import SimplifyResult, simplify_onnx
from .tensorrt import BatchProfile, EngineResult, TrtRunner, build_engine, check_sidecar, trtexec_commands

__all__ = [
    "BatchProfile",
    "Comparison",
    "DeployMetadata",
    "EngineResult",
    "LatencyReport",
    "LatencyStats",
    "OnnxExportResult",
    "OrtRunner",
    "QuantizeResult",
    "Runner",
    "RunnerInfo",
    "SimplifyResult",
    "TorchRunner",
    "TrtRunner",
    "build_engine",
    "check_sidecar",
    "compare_logits",
    "compare_runners",
    "config_hash",
    "export_onnx",
    "load_onnx",
    "measure_latency",
    "quantize_int8",
    "read_metadata",
    "simplify_onnx",
    "trtexec_commands",
    "validate_batch",
]
