"""Static INT8 post-training quantization to a QDQ ONNX model (onnxruntime's quantization tool).

The result runs on onnxruntime's CPU provider and is the input for TensorRT's *explicit*
quantization (TensorRT honours the Q/DQ placement and scales instead of calibrating itself).
TensorRT-driven choices:

* ``QuantFormat.QDQ``, signed INT8 activations and weights, ``ActivationSymmetric`` and
  ``WeightSymmetric`` (TensorRT only supports symmetric INT8, zero-point 0);
* per-channel weight scales (``per_channel=True``, axis 0 of Conv weights);
* ``QuantizeBias=False``: biases stay float — TensorRT's ONNX parser rejects INT32
  ``DequantizeLinear`` inputs and fuses the float bias into the INT8 convolution itself.

Quantization math (per tensor, or per output channel for weights): ``scale = max|x| / 127``,
``q = clamp(round(x / scale), -128, 127)``, ``x̂ = q · scale``; activation ranges come from
calibration (``MinMax`` by default: the extreme values seen over the calibration images).

``activations="uint8"`` makes the onnxruntime-CPU flavour instead (``model.int8.cpu.onnx`` in the
pipeline): unsigned asymmetric activations, ``scale = (max - min) / 255``, ``zero_point =
round(-min / scale)``, ``q = clamp(round(x / scale) + zero_point, 0, 255)``, weights still signed
symmetric per channel (U8S8). Timed with onnxruntime 1.31 on x86 (``bench/results``): its QDQ
fusion turns every Conv/Add of a CIFAR ResNet into ``QLinearConv``/``QLinearAdd`` with U8
activations, but leaves 11 of 21 convolutions in float between Dequantize/Quantize nodes with S8
activations — which is why the TensorRT flavour runs at about half the speed of FP32 on the CPU.
TensorRT cannot use the U8 flavour (no zero points). The TensorRT flavour's Q/DQ placement follows TensorRT's rules
as NVIDIA ModelOpt applies them (:mod:`export.qdq_placement`: Conv inputs and weights, the skip input of residual Adds,
pooling inputs; no Q on layer outputs, classifier head in float), so onnxruntime fuses none of its convolutions.
Both flavours import only the opset domains their nodes use.

**Saturation on x86 CPUs without VNNI.** onnxruntime's fused integer convolutions (``QLinearConv``, and the S8S8
flavour, which it runs as U8S8 with the activations shifted by 128) multiply with ``vpmaddubsw`` on AVX2 / AVX-512
CPUs that lack VNNI: it adds *pairs* of u8·s8 products into a signed 16-bit lane with saturation, and
2 · 255 · 127 = 64,770 > 32,767, so large activation/weight pairs clip (the "saturation issue" of onnxruntime's
quantization documentation and OpenVINO's "Saturation (overflow) issue workaround"). VNNI (``vpdpbusd``), AMX and Arm
accumulate in 32 bits. Timed on an AMD EPYC (Zen 2, AVX2, no VNNI) with onnxruntime 1.31, a small CIFAR CNN: top-1
agreement with FP32 83.8 % (S8S8) / 86.1 % (U8S8) through the fused kernels vs 97.2 % / 97.7 % with the same QDQ graph
run unfused. The remedy of both documents: 7-bit weights (``reduce_range``: ``|q| ≤ 64``, ``scale = max|w| / 64``),
which keeps every pair sum within int16 — 96.8 % / 98.1 % on that CPU. :func:`int8_saturates` tells whether this
CPU is affected; the pipeline quantizes the onnxruntime-CPU flavour with ``reduce_range`` there
(``export.int8_reduce_range: auto``). The TensorRT flavour keeps 8-bit weights (TensorRT accumulates in 32 bits); on
the CPU it is evaluated as TensorRT computes it, Q/DQ as float operations (:func:`tensorrt_flavour`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from ccpcsa.errors import UserError, write_error
from ccpcsa.io.artifacts import atomic_path, sha256_file
from ccpcsa.surgery.alignment import VNNI_FLAGS, cpu_flags

from .metadata import carry_metadata, get_props
from .onnx_io import (
    ArtifactRecord,
    PathLike,
    check_onnx,
    first_line,
    input_signature,
    is_qdq,
    load_onnx,
    node_count,
    op_counts,
)
from .qdq_placement import (
    apply_residual_add_rule,
    drop_unused_opsets,
    non_residual_add_inputs,
    qdq_placement,
    tensorrt_quantize_options,
)

DEFAULT_CALIBRATION_IMAGES = 512
ACTIVATION_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


X86_MACHINES = ("x86_64", "amd64", "i386", "i686")
REDUCE_RANGE_CHOICES = ("auto", True, False)


def int8_saturates(flags: frozenset[str] | None = None, machine: str | None = None) -> tuple[bool, str]:
    """``(saturates, why)``: whether onnxruntime's fused INT8 convolutions can saturate on this CPU — an x86 CPU
    without VNNI/AMX, whose u8·s8 dot products add pairs into int16 (module docstring). ``flags`` / ``machine``
    default to this machine's ``/proc/cpuinfo`` flags and ``platform.machine()``."""
    arch = (machine or platform.machine()).lower()
    f = cpu_flags() if flags is None else flags
    if arch not in X86_MACHINES:
        return False, f"{arch} CPU: onnxruntime's INT8 kernels accumulate in 32 bits"
    have = sorted(VNNI_FLAGS & f)
    if have:
        return False, f"x86 CPU with {', '.join(have)}: 32-bit INT8 dot products"
    return True, "x86 CPU without VNNI/AMX: INT8 dot products add pairs into int16 and saturate with 8-bit weights"


def resolve_reduce_range(setting: bool | str, flags: frozenset[str] | None = None,
                         machine: str | None = None) -> tuple[bool, str]:
    """``(reduce_range, why)`` for ``export.int8_reduce_range`` (``auto``: 7-bit weights where :func:`int8_saturates` of
    ``flags`` / ``machine`` — the target device's when it was probed, else this machine's)."""
    if isinstance(setting, bool):
        return setting, "set by export.int8_reduce_range"
    if setting != "auto":
        raise UserError(f"export.int8_reduce_range must be auto, true or false, got {setting!r}")
    sat, why = int8_saturates(flags, machine)
    return sat, f"auto: {why}"


def tensorrt_flavour(path: PathLike) -> bool:
    """True for a QDQ model quantized by :func:`quantize_int8` with signed activations (the TensorRT flavour,
    ``model.int8.onnx``): evaluate it on the CPU with graph optimization off, Q/DQ as float operations — what
    TensorRT computes (32-bit accumulation) — instead of onnxruntime's fused integer kernels, which can saturate
    (:func:`int8_saturates`) and are not its target. False for FP32 models and the uint8 (onnxruntime-CPU) flavour."""
    props = get_props(load_onnx(path, check=False))
    try:
        q = json.loads(props.get("quantization", "") or "{}")
    except json.JSONDecodeError:
        return False
    return isinstance(q, dict) and q.get("activation_type") == "int8"


class NumpyCalibrationReader(CalibrationDataReader):
    """Feeds ``images`` (float32, normalized, NCHW) to the calibrator in batches of ``batch_size``."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 32) -> None:
        self.images = images
        self.input_name = input_name
        self.batch_size = max(1, int(batch_size))
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Next ``{input_name: batch}``, or ``None`` when all images have been served."""
        if self._pos >= len(self.images):
            return None
        batch = self.images[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        """Start again from the first image."""
        self._pos = 0

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)


@dataclass(frozen=True)
class QuantizeResult(ArtifactRecord):
    """Outcome of :func:`quantize_int8`."""

    path: Path
    nodes: int
    op_counts: dict[str, int]
    num_calibration: int
    calibrate_method: str
    per_channel: bool
    symmetric_activations: bool
    activations: str
    preprocessed: bool
    reduce_range: bool
    sha256: str
    seconds: float
    placement: str = "onnxruntime-cpu"  # "tensorrt" (export.qdq_placement) or "onnxruntime-cpu" (the uint8 flavour)
    qdq_placement: dict[str, int] | None = None  # export.qdq_placement.qdq_placement of the written model


def _calibration_array(images: object, chw: tuple[int, int, int], limit: int) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise UserError(f"calibration images must be a numpy array, got {type(images).__name__}")
    if not np.issubdtype(images.dtype, np.floating):
        raise UserError(
            f"calibration images must be float32 normalized NCHW, got dtype {images.dtype} "
            "(normalize uint8 pixels first: (x/255 - mean) / std)"
        )
    if images.ndim != 4 or tuple(images.shape[1:]) != chw:
        raise UserError(f"calibration images must have shape (N, {chw[0]}, {chw[1]}, {chw[2]}), got {images.shape}")
    if len(images) == 0:
        raise UserError("calibration images are empty; need at least one image")
    return np.ascontiguousarray(images[:limit], dtype=np.float32)


def quantize_int8(
    src: PathLike,
    dest: PathLike,
    calibration: np.ndarray,
    *,
    num_calibration: int = DEFAULT_CALIBRATION_IMAGES,
    batch_size: int = 32,
    calibrate_method: str = "minmax",
    per_channel: bool = True,
    symmetric_activations: bool = True,
    activations: str = "int8",
    preprocess: bool = True,
    nodes_to_exclude: Sequence[str] = (),
    op_types: Sequence[str] | None = None,
    reduce_range: bool = False,
) -> QuantizeResult:
    """Quantize the FP32 ONNX model ``src`` to an INT8 QDQ model at ``dest`` (atomically).

    ``calibration`` is a float array ``(N, C, H, W)`` of training images normalized exactly like
    the model's inputs; the first ``min(N, num_calibration)`` images are used (shuffle beforehand
    for a representative subset). ``activations``: ``"int8"`` (signed; symmetric unless
    ``symmetric_activations`` is false — the TensorRT flavour) or ``"uint8"`` (unsigned asymmetric
    U8S8 — the onnxruntime-CPU flavour, where every convolution fuses into ``QLinearConv``).
    The TensorRT flavour places Q/DQ by TensorRT's rules as NVIDIA ModelOpt applies them
    (:mod:`export.qdq_placement`): on Conv activation inputs and weights, on the skip input of each residual Add
    and on pooling inputs — never on layer outputs, the classifier Gemm or the logits; ``op_types`` replaces its
    list of quantized op types. The uint8 flavour quantizes every supported op (or ``op_types``), outputs included,
    as onnxruntime's integer kernels need. Both files declare only the opset domains their nodes use.
    ``nodes_to_exclude`` names nodes (of the *preprocessed* graph
    when ``preprocess``; check :func:`export.onnx_io.op_counts` / node names) kept in float, e.g.
    a sensitive classifier head. ``reduce_range``: 7-bit weights (``|q| ≤ 64``), for x86 CPUs without VNNI
    (:func:`int8_saturates`). With ``preprocess`` the model first goes through
    ``quant_pre_process`` (symbolic shape inference + ORT graph optimization, which folds what
    onnxsim left and gives the quantizer complete shape information).

    The output carries ``src``'s ``metadata_props`` with ``precision="int8-qdq"``,
    ``stage="quantized"``, ``parent_sha256`` and a JSON ``quantization`` record. Bad calibration
    data, a model that is already quantized, or a quantizer failure is a :class:`UserError`;
    nothing is written to ``dest`` then.
    """
    if calibrate_method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method '{calibrate_method}'; known: {', '.join(CALIBRATION_METHODS)}")
    if activations not in ACTIVATION_TYPES:
        raise UserError(f"unknown INT8 activation type '{activations}'; use int8 (TensorRT) or uint8 (onnxruntime CPU)")
    if activations == "uint8":
        symmetric_activations = False  # a uint8 tensor with zero point 128 would waste the ReLU outputs' half range
    if num_calibration < 1:
        raise UserError(f"num_calibration must be >= 1, got {num_calibration}")
    model = load_onnx(src)
    if is_qdq(model):
        raise UserError(f"'{src}' already contains QuantizeLinear/DequantizeLinear nodes; quantize the FP32 model")
    input_name, _, chw = input_signature(model, what=f"'{src}'")
    images = _calibration_array(calibration, chw, num_calibration)
    start = time.perf_counter()
    placement = "tensorrt" if activations == "int8" else "onnxruntime-cpu"
    settings = {"format": "QDQ", "activation_type": activations, "weight_type": "int8", "reduce_range": bool(reduce_range),
                "per_channel": per_channel, "symmetric_activations": symmetric_activations, "symmetric_weights": True,
                "quantize_bias": False, "calibrate_method": calibrate_method, "num_calibration": len(images),
                "nodes_to_exclude": list(nodes_to_exclude), "op_types": list(op_types) if op_types else "all",
                "placement": placement}
    # Scratch files (the preprocessed model, onnxruntime's augmented calibration model) live in a hidden folder
    # beside ``dest``, ``.<dest name>.<random>.quant.tmp``: inside the run directory, where the runner's
    # temp-file cleanup (pipeline.manifest.clear_temp_files) removes it if a killed run leaves it behind.
    with _scratch_dir(Path(str(dest))) as work:
        fp32_path = _preprocessed(src, Path(work)) if preprocess else Path(str(src))
        with atomic_path(dest) as tmp:
            qmodel = _quantize_static(src, fp32_path, tmp, NumpyCalibrationReader(images, input_name, batch_size), settings,
                                      op_types)
            carry_metadata(model, qmodel, precision="int8-qdq", stage="quantized", parent_sha256=sha256_file(src),
                           quantization=json.dumps(settings))
            check_onnx(qmodel, what=f"INT8 model of '{src}'")
            onnx.save_model(qmodel, str(tmp))
    return QuantizeResult(path=Path(dest), nodes=node_count(qmodel), op_counts=op_counts(qmodel), num_calibration=len(images),
                          calibrate_method=calibrate_method, per_channel=per_channel,
                          symmetric_activations=symmetric_activations, activations=activations, preprocessed=preprocess,
                          reduce_range=bool(reduce_range), sha256=sha256_file(dest),
                          seconds=round(time.perf_counter() - start, 3), placement=placement,
                          qdq_placement=qdq_placement(qmodel))


def _preprocessed(src: PathLike, work: Path) -> Path:
    """``src`` through onnxruntime's ``quant_pre_process`` (symbolic shape inference + graph optimization) into
    ``work``; a failure is one :class:`UserError` line."""
    pre = work / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
    except Exception as exc:
        raise UserError(f"quant_pre_process failed on '{src}': {first_line(exc)}") from exc
    return pre


def _quantize_static(src: PathLike, fp32_path: Path, out: Path, reader: NumpyCalibrationReader, settings: dict[str, Any],
                     op_types: Sequence[str] | None) -> onnx.ModelProto:
    """onnxruntime's ``quantize_static`` of ``fp32_path`` into ``out`` as ``settings`` say (QDQ, activation type,
    per-channel, symmetry, calibration, exclusions, 7-bit weights); the TensorRT flavour (int8 activations) with
    ModelOpt's placement (:func:`tensorrt_quantize_options`, :func:`apply_residual_add_rule`; ``settings["op_types"]``
    becomes its op list), unused opset imports dropped. Returns the quantized model (not yet carrying metadata)."""
    quant_types: list[str] | None = list(op_types) if op_types else None
    extra: dict = {"ActivationSymmetric": settings["symmetric_activations"], "WeightSymmetric": True, "QuantizeBias": False}
    non_residual: dict[str, int | None] = {}
    if settings["activation_type"] == "int8":  # TensorRT placement (export.qdq_placement)
        fp32_graph = load_onnx(fp32_path, check=False)
        quant_types, trt_extra = tensorrt_quantize_options(fp32_graph, op_types)
        extra = {**trt_extra, "ActivationSymmetric": settings["symmetric_activations"]}
        non_residual = non_residual_add_inputs(fp32_graph)
        settings["op_types"] = quant_types
    # The quantizer logs a line per tensor at INFO; keep the console readable.
    with _quiet_logger(), contextlib.redirect_stdout(io.StringIO()):
        try:
            quantize_static(str(fp32_path), str(out), reader, quant_format=QuantFormat.QDQ,
                            per_channel=settings["per_channel"], activation_type=ACTIVATION_TYPES[settings["activation_type"]],
                            weight_type=QuantType.QInt8, reduce_range=settings["reduce_range"],
                            calibrate_method=CALIBRATION_METHODS[settings["calibrate_method"]],
                            nodes_to_exclude=settings["nodes_to_exclude"] or None, op_types_to_quantize=quant_types,
                            extra_options=extra)
        except Exception as exc:
            raise UserError(f"INT8 quantization of '{src}' failed: {first_line(exc)}") from exc
    qmodel = load_onnx(out)
    apply_residual_add_rule(qmodel, non_residual)
    drop_unused_opsets(qmodel)
    return qmodel


@contextlib.contextmanager
def _scratch_dir(dest: Path) -> Iterator[str]:
    """A temporary folder ``.<dest name>.<random>.quant.tmp`` beside ``dest``, also made the process's temp root
    (``tempfile.tempdir``) for the duration, so the temporary folders onnxruntime's quantizer opens itself land
    inside it instead of ``/tmp``. Removed on exit; a SIGKILL leaves it for the runner's cleanup."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.TemporaryDirectory(prefix=f".{dest.name}.", suffix=".quant.tmp", dir=dest.parent)
    except OSError as exc:  # unwritable / full: one line naming the artifact
        raise (write_error(exc, dest) or exc) from exc
    old = tempfile.tempdir
    with scratch as work:
        tempfile.tempdir = work
        try:
            yield work
        finally:
            tempfile.tempdir = old


@contextlib.contextmanager
def _quiet_logger(level: int = logging.WARNING) -> Iterator[None]:
    """Raise the root logger's level to ``level`` for the duration (onnxruntime logs via root)."""
    logger = logging.getLogger()
    old = logger.level
    logger.setLevel(max(old, level))
    try:
        yield
    finally:
        logger.setLevel(old)
