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
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ccpcsa.artifacts import atomic_path, atomic_write_bytes, atomic_write_json, sha256_file
from ccpcsa.errors import UserError

from .metadata import decode_props, get_props
from .onnx_io import PathLike, first_line, input_signature, is_qdq, load_onnx
from .runtime import Runner, RunnerInfo

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
SIDECAR_FORMAT = "ccpcsa-trt-engine/1"
MIN_TRT_MAJOR = 10
Status = Literal["ok", "skipped", "failed"]


@dataclass(frozen=True)
class BatchProfile:
    """Optimization-profile batch sizes: ``1 <= min <= opt <= max``."""

    min: int = 1
    opt: int = 32
    max: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise UserError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    def shapes(self, chw: tuple[int, int, int]) -> dict[str, list[int]]:
        """``{"min": [min, C, H, W], "opt": [...], "max": [...]}``."""
        return {k: [getattr(self, k), *chw] for k in ("min", "opt", "max")}


@dataclass
class EngineResult:
    """Outcome of :func:`build_engine`: ``status`` is ``"ok"``, ``"skipped"`` or ``"failed"`` with ``reason``."""

    status: Status
    reason: str = ""
    precision: str = ""
    engine_path: Path | None = None
    sidecar_path: Path | None = None
    timing_cache_path: Path | None = None
    seconds: float = 0.0
    sidecar: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when an engine was built."""
        return self.status == "ok"

    def raise_for_failure(self) -> None:
        """Raise :class:`UserError` with ``reason`` when ``status == "failed"``."""
        if self.status == "failed":
            raise UserError(self.reason)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings or ``None``)."""
        d = asdict(self)
        for key in ("engine_path", "sidecar_path", "timing_cache_path"):
            d[key] = str(d[key]) if d[key] is not None else None
        return d


def sidecar_path_for(engine_path: PathLike) -> Path:
    """The JSON sidecar that belongs to an engine: ``<engine>.json`` (e.g. ``model.engine.json``)."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def _import_trt() -> tuple[Any, str | None]:
    """``(tensorrt module, None)`` or ``(None, reason)``."""
    try:
        import tensorrt
    except ImportError as exc:
        return None, f"TensorRT Python package is not installed ({first_line(exc)}); pip install 'tensorrt>=10'"
    except Exception as exc:  # a broken install (missing CUDA libraries) raises OSError etc.
        return None, f"TensorRT failed to import: {first_line(exc)}"
    if not hasattr(tensorrt, "Builder"):
        # e.g. only the `tensorrt-stubs` type stubs are installed: `tensorrt/` imports as an
        # empty namespace package.
        return None, "TensorRT Python package is not installed (only its type stubs); pip install 'tensorrt>=10'"
    version = str(getattr(tensorrt, "__version__", "0"))
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major < MIN_TRT_MAJOR:
        return None, f"TensorRT {version} is too old; this pipeline needs TensorRT >= {MIN_TRT_MAJOR}"
    return tensorrt, None


def gpu_info() -> tuple[str, str] | None:
    """``(GPU name, compute capability "major.minor")`` of CUDA device 0, or ``None`` without a GPU.

    Uses torch's CUDA runtime when available, else pycuda.
    """
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return torch.cuda.get_device_name(0), f"{major}.{minor}"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() < 1:
            return None
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        return str(dev.name()), f"{major}.{minor}"
    except Exception:  # no pycuda, no driver, no device: all mean "no usable GPU"
        return None


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT engines cannot be built or run here (``None`` when they can)."""
    _, reason = _import_trt()
    if reason:
        return reason
    if gpu_info() is None:
        return "no CUDA GPU visible (torch.cuda.is_available() is False and pycuda found no device)"
    return None


def check_sidecar(sidecar: Mapping[str, Any], *, trt_version: str, gpu_name: str, engine: str = "engine") -> None:
    """Raise :class:`UserError` unless ``sidecar`` was written for ``trt_version`` on ``gpu_name``.

    A TensorRT plan is only valid for the exact TensorRT version and GPU model that built it. The
    comparison is on the full version string and the GPU name (whitespace-trimmed); the error
    names both sides and says to rebuild from the ONNX artifact. A sidecar whose ``format`` is
    another tool's (not :data:`SIDECAR_FORMAT`) is refused too.
    """
    fmt = sidecar.get("format")
    if fmt is not None and fmt != SIDECAR_FORMAT:
        raise UserError(f"{engine}: sidecar format is {fmt!r}, not {SIDECAR_FORMAT!r}; rebuild the engine from its ONNX model")
    missing = [k for k in ("tensorrt_version", "gpu") if k not in sidecar]
    if missing:
        raise UserError(f"{engine}: sidecar lacks {', '.join(missing)}; rebuild the engine from its ONNX model")
    built_v, built_gpu = str(sidecar["tensorrt_version"]).strip(), str(sidecar["gpu"]).strip()
    problems = []
    if built_v != trt_version.strip():
        problems.append(f"TensorRT {built_v} (installed: {trt_version.strip()})")
    if built_gpu != gpu_name.strip():
        problems.append(f"GPU '{built_gpu}' (this machine: '{gpu_name.strip()}')")
    if problems:
        raise UserError(
            f"{engine} was built for {' and '.join(problems)}; rebuild it here from the ONNX model "
            "(build_engine or the trtexec command)"
        )


def load_sidecar(engine_path: PathLike) -> dict[str, Any]:
    """Read ``<engine>.json``; a missing or malformed sidecar is a :class:`UserError`."""
    side = sidecar_path_for(engine_path)
    if not side.is_file():
        raise UserError(f"engine '{engine_path}' has no sidecar '{side.name}'; rebuild it with build_engine")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"engine sidecar '{side}' is not valid JSON: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise UserError(f"engine sidecar '{side}' must hold a JSON object")
    return data


def trtexec_commands(
    onnx_path: PathLike,
    int8_onnx_path: PathLike | None = None,
    *,
    profile: BatchProfile | None = None,
    input_name: str = "input",
    input_chw: tuple[int, int, int] = (3, 32, 32),
    workspace_mb: int = 1024,
    timing_cache: str | None = "timing.cache",
) -> dict[str, str]:
    """``trtexec`` command lines that rebuild the engines on an edge device (e.g. a Jetson).

    Returns ``{"fp16": cmd}`` plus ``{"int8": cmd}`` when ``int8_onnx_path`` (a QDQ model) is given.
    Both use the same ``--minShapes/--optShapes/--maxShapes`` as :func:`build_engine`, a workspace
    pool of ``workspace_mb`` MiB and (optionally) a shared timing cache. The engine is written next
    to its ONNX file as ``<stem>_<precision>.engine``. Pure string building: needs no TensorRT.
    """
    profile = profile or BatchProfile()
    shapes = {k: "x".join(str(d) for d in v) for k, v in profile.shapes(input_chw).items()}

    def command(src: PathLike, precision: str, flags: list[str]) -> str:
        p = Path(src)
        engine = p.with_name(f"{p.stem}_{precision}.engine")
        parts = [
            "trtexec",
            f"--onnx={p}",
            f"--saveEngine={engine}",
            f"--minShapes={input_name}:{shapes['min']}",
            f"--optShapes={input_name}:{shapes['opt']}",
            f"--maxShapes={input_name}:{shapes['max']}",
            f"--memPoolSize=workspace:{workspace_mb}M",
            *flags,
        ]
        if timing_cache:
            parts.append(f"--timingCacheFile={timing_cache}")
        return " ".join(shlex.quote(x) for x in parts)

    cmds = {"fp16": command(onnx_path, "fp16", ["--fp16"])}
    if int8_onnx_path is not None:
        # QDQ model = explicit quantization; --fp16 lets unquantized layers use FP16 (see module doc).
        cmds["int8"] = command(int8_onnx_path, "int8", ["--int8", "--fp16"])
    return cmds


def write_trtexec_script(dest: PathLike, commands: Mapping[str, str]) -> Path:
    """Write ``commands`` as a ``bash`` script (one line per precision) atomically; return ``dest``."""
    lines = ["#!/usr/bin/env bash", "# Build TensorRT engines on the target device from the ONNX artifacts.", "set -euo pipefail"]
    lines += [f"# {name}\n{cmd}" for name, cmd in commands.items()]
    with atomic_path(dest) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
    return Path(dest)


def _skipped(reason: str, precision: str) -> EngineResult:
    return EngineResult(status="skipped", reason=reason, precision=precision)


def build_engine(
    onnx_path: PathLike,
    dest: PathLike,
    *,
    precision: str = "fp16",
    profile: BatchProfile | None = None,
    workspace_mb: int = 1024,
    timing_cache: PathLike | None = None,
) -> EngineResult:
    """Build a TensorRT engine from ``onnx_path`` and write ``dest`` plus its JSON sidecar.

    ``precision``: ``"fp32"``, ``"fp16"`` or ``"int8"`` (``onnx_path`` must then be a QDQ model).
    ``timing_cache`` defaults to ``timing.cache`` beside ``dest``; it is read if present and
    rewritten after the build. Bad arguments or a bad ONNX file raise :class:`UserError` even
    where TensorRT is absent. Returns ``skipped`` (no TensorRT / no GPU), ``failed`` (parser or
    builder errors, verbatim in ``reason``) or ``ok``. Writes are atomic: a failed build leaves a
    previous engine and sidecar at ``dest`` untouched.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown TensorRT precision '{precision}'; known: {', '.join(PRECISIONS)}")
    if workspace_mb < 1:
        raise UserError(f"workspace_mb must be >= 1, got {workspace_mb}")
    profile = profile or BatchProfile()
    model = load_onnx(onnx_path)
    input_name, _, chw = input_signature(model, what=f"'{onnx_path}'")
    if precision == "int8" and not is_qdq(model):
        raise UserError(f"int8 engines are built from a QDQ model; '{onnx_path}' has no Q/DQ nodes (run quantize_int8 first)")
    trt_mod, reason = _import_trt()
    if trt_mod is None:
        return _skipped(reason or "TensorRT unavailable", precision)
    gpu = gpu_info()
    if gpu is None:
        return _skipped("no CUDA GPU visible (torch.cuda.is_available() is False and pycuda found no device)", precision)
    cache_path = Path(timing_cache) if timing_cache is not None else Path(dest).with_name("timing.cache")
    start = time.perf_counter()
    try:
        result = _build(onnx_path, Path(dest), precision, profile, workspace_mb, cache_path, input_name, chw, gpu)
    except Exception as exc:
        # An optional pipeline step: report it as failed (the traceback goes to the log) rather
        # than abort a run whose ONNX/INT8 artifacts are already written.
        log.exception("TensorRT engine build failed for %s", onnx_path)
        result = EngineResult(
            status="failed", precision=precision, reason=f"TensorRT build error ({type(exc).__name__}): {first_line(exc)}"
        )
    result.seconds = round(time.perf_counter() - start, 3)
    if result.ok:
        result.sidecar["metadata"] = decode_props(get_props(model))
        result.sidecar["build_seconds"] = result.seconds
        atomic_write_json(sidecar_path_for(dest), result.sidecar)
    return result


def _use_timing_cache(config: trt.IBuilderConfig, cache_path: Path) -> None:
    """Attach the timing cache at ``cache_path`` to ``config``; start empty if it is absent or unusable.

    A cache from another TensorRT version or GPU is rejected by TensorRT (``set_timing_cache``
    returns False, or deserialization fails); it is then replaced after the build.
    """
    data = cache_path.read_bytes() if cache_path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return
    except Exception as exc:  # TensorRT raises plain RuntimeError/TypeError for a corrupt cache blob
        log.warning("ignoring unusable timing cache %s: %s", cache_path, first_line(exc))
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _build(
    onnx_path: PathLike,
    dest: Path,
    precision: str,
    profile: BatchProfile,
    workspace_mb: int,
    cache_path: Path,
    input_name: str,
    chw: tuple[int, int, int],
    gpu: tuple[str, str],
) -> EngineResult:
    import tensorrt as trt

    logger, errors, warnings = _collecting_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: every network is explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        parser_errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        return EngineResult(
            status="failed",
            precision=precision,
            reason=f"TensorRT ONNX parser rejected '{onnx_path}': " + " | ".join(parser_errors or errors),
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    opt_profile = builder.create_optimization_profile()
    shapes = profile.shapes(chw)
    opt_profile.set_shape(input_name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
    config.add_optimization_profile(opt_profile)
    _use_timing_cache(config, cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return EngineResult(
            status="failed",
            precision=precision,
            reason=f"TensorRT builder produced no engine for '{onnx_path}': " + " | ".join(errors or ["no error logged"]),
        )
    engine_bytes = bytes(memoryview(serialized))
    atomic_write_bytes(dest, engine_bytes)
    atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    sidecar: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "engine": dest.name,
        "engine_sha256": sha256_file(dest),
        "tensorrt_version": str(trt.__version__),
        "gpu": gpu[0],
        "compute_capability": gpu[1],
        "precision": precision,
        "fast_fp16": bool(builder.platform_has_fast_fp16),
        "fast_int8": bool(builder.platform_has_fast_int8),
        "profile": {"input": input_name, **shapes},
        "workspace_mb": workspace_mb,
        "timing_cache": cache_path.name,
        "onnx": str(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "warnings": warnings[-20:],
    }
    return EngineResult(
        status="ok",
        precision=precision,
        engine_path=dest,
        sidecar_path=sidecar_path_for(dest),
        timing_cache_path=cache_path,
        sidecar=sidecar,
    )


def _collecting_logger() -> tuple[trt.ILogger, list[str], list[str]]:
    """A ``trt.ILogger`` that keeps error and warning messages (for failure reasons and the sidecar)."""
    import tensorrt as trt

    errors: list[str] = []
    warnings: list[str] = []

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                errors.append(msg)
            elif severity == trt.ILogger.WARNING:
                warnings.append(msg)

    return _Logger(), errors, warnings


# --------------------------------------------------------------------------------------------
# Runner


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    """``trt.Dims`` as a tuple of ints (``Dims`` supports ``len`` and indexing, not ``__iter__``)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


class _DeviceBuffers:
    """Page-locked host + device buffers for one input and one output, and a CUDA stream."""

    stream_handle: int
    input_ptr: int
    output_ptr: int

    def upload(self, batch: np.ndarray) -> None:
        """Copy ``batch`` into the pinned input buffer, then host→device asynchronously on the stream."""
        raise NotImplementedError

    def download(self, shape: tuple[int, ...]) -> np.ndarray:
        """Device→host copy of the first ``prod(shape)`` outputs, synchronize, return a copy."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for the stream."""
        raise NotImplementedError


class _PycudaBuffers(_DeviceBuffers):
    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], in_dtype: Any, out_dtype: Any) -> None:
        import pycuda.driver as cuda

        # Use device 0's *primary* context (the one the CUDA runtime, TensorRT and torch use),
        # rather than pycuda.autoinit's private context, so all libraries share one context.
        cuda.init()
        self._ctx = cuda.Device(0).retain_primary_context()
        self._ctx.push()
        self._cuda = cuda
        self.h_in = cuda.pagelocked_empty(in_shape, dtype=in_dtype)
        self.h_out = cuda.pagelocked_empty(out_shape, dtype=out_dtype)
        self.d_in = cuda.mem_alloc(self.h_in.nbytes)
        self.d_out = cuda.mem_alloc(self.h_out.nbytes)
        self.stream = cuda.Stream()
        self.stream_handle = int(self.stream.handle)
        self.input_ptr, self.output_ptr = int(self.d_in), int(self.d_out)

    def upload(self, batch: np.ndarray) -> None:
        n = batch.shape[0]
        self.h_in[:n] = batch
        self._cuda.memcpy_htod_async(self.d_in, self.h_in[:n], self.stream)

    def download(self, shape: tuple[int, ...]) -> np.ndarray:
        view = self.h_out.reshape(-1)[: int(np.prod(shape))]
        self._cuda.memcpy_dtoh_async(view, self.d_out, self.stream)
        self.stream.synchronize()
        return np.array(view.reshape(shape), dtype=np.float32)

    def synchronize(self) -> None:
        self.stream.synchronize()


class _TorchBuffers(_DeviceBuffers):
    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], in_dtype: Any, out_dtype: Any) -> None:
        import torch

        def tdtype(np_dtype: Any) -> torch.dtype:
            return torch.from_numpy(np.zeros(1, dtype=np_dtype)).dtype

        self._torch = torch
        self.h_in = torch.empty(in_shape, dtype=tdtype(in_dtype), pin_memory=True)
        self.h_out = torch.empty(out_shape, dtype=tdtype(out_dtype), pin_memory=True)
        self.d_in = torch.empty(in_shape, dtype=tdtype(in_dtype), device="cuda")
        self.d_out = torch.empty(out_shape, dtype=tdtype(out_dtype), device="cuda")
        self.stream = torch.cuda.Stream()
        self.stream_handle = int(self.stream.cuda_stream)
        self.input_ptr, self.output_ptr = int(self.d_in.data_ptr()), int(self.d_out.data_ptr())

    def upload(self, batch: np.ndarray) -> None:
        n = batch.shape[0]
        self.h_in[:n].copy_(self._torch.from_numpy(batch))
        with self._torch.cuda.stream(self.stream):
            self.d_in[:n].copy_(self.h_in[:n], non_blocking=True)

    def download(self, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        with self._torch.cuda.stream(self.stream):
            self.h_out.view(-1)[:count].copy_(self.d_out.view(-1)[:count], non_blocking=True)
        self.stream.synchronize()
        return np.array(self.h_out.view(-1)[:count].numpy().reshape(shape), dtype=np.float32)

    def synchronize(self) -> None:
        self.stream.synchronize()


class TrtRunner(Runner):
    """Runs a serialized TensorRT engine (same interface as the other runners).

    Loading: the sidecar is checked against the installed TensorRT version and this GPU
    (:func:`check_sidecar`; mismatch → :class:`UserError` naming both), then the engine is
    deserialized. Buffers for the profile's max batch are allocated once: page-locked host and
    device memory plus a stream from pycuda, or torch CUDA tensors when pycuda is missing. Each
    ``run``: copy in, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``, copy out,
    synchronize.
    """

    def __init__(self, engine_path: PathLike, *, backend: str = "auto") -> None:
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise UserError(f"engine file '{self.path}' does not exist")
        sidecar = load_sidecar(self.path)
        recorded = sidecar.get("engine_sha256")
        if recorded and recorded != sha256_file(self.path):
            raise UserError(
                f"engine '{self.path.name}' does not match its sidecar (SHA-256 differs); rebuild the engine"
            )
        trt_mod, reason = _import_trt()
        if trt_mod is None:
            raise UserError(f"cannot run engine '{self.path.name}': {reason}")
        gpu = gpu_info()
        if gpu is None:
            raise UserError(f"cannot run engine '{self.path.name}': no CUDA GPU visible")
        check_sidecar(sidecar, trt_version=str(trt_mod.__version__), gpu_name=gpu[0], engine=f"engine '{self.path.name}'")
        self._load(sidecar, gpu[0], backend)

    def _load(self, sidecar: Mapping[str, Any], gpu_name: str, backend: str) -> None:
        import tensorrt as trt

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise UserError(f"TensorRT could not deserialize '{self.path}' (corrupt file or incompatible build)")
        self._engine: trt.ICudaEngine = engine
        self._context: trt.IExecutionContext = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"engine '{self.path.name}' has {len(inputs)} inputs / {len(outputs)} outputs; expected 1 / 1")
        self.input_name, self.output_name = inputs[0], outputs[0]
        _, _, max_shape = engine.get_tensor_profile_shape(self.input_name, 0)
        max_in = _dims(max_shape)
        self._context.set_input_shape(self.input_name, trt.Dims(list(max_in)))
        max_out = _dims(self._context.get_tensor_shape(self.output_name))
        in_dtype = trt.nptype(engine.get_tensor_dtype(self.input_name))
        out_dtype = trt.nptype(engine.get_tensor_dtype(self.output_name))
        self._in_dtype = np.dtype(in_dtype)
        self._buffers = self._make_buffers(backend, max_in, max_out, in_dtype, out_dtype)
        self.info = RunnerInfo(
            format="tensorrt",
            precision=str(sidecar.get("precision", "unknown")),
            device=gpu_name,
            threads=None,
            input_chw=(max_in[1], max_in[2], max_in[3]),
            name=f"TrtRunner({self.path.name})",
            max_batch=max_in[0],
            extra={"backend": self.backend, "tensorrt_version": str(trt.__version__), "profile": sidecar.get("profile")},
        )

    def _make_buffers(
        self, backend: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...], in_dtype: Any, out_dtype: Any
    ) -> _DeviceBuffers:
        if backend not in ("auto", "pycuda", "torch"):
            raise UserError(f"TrtRunner: unknown backend '{backend}'; known: auto, pycuda, torch")
        if backend in ("auto", "pycuda"):
            try:
                buffers: _DeviceBuffers = _PycudaBuffers(in_shape, out_shape, in_dtype, out_dtype)
                self.backend = "pycuda"
                return buffers
            except ImportError:
                if backend == "pycuda":
                    raise UserError("TrtRunner: backend 'pycuda' requested but pycuda is not installed") from None
        self.backend = "torch"
        return _TorchBuffers(in_shape, out_shape, in_dtype, out_dtype)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import tensorrt as trt

        x = batch.astype(self._in_dtype, copy=False)
        self._buffers.upload(x)
        self._context.set_input_shape(self.input_name, trt.Dims(list(x.shape)))
        self._context.set_tensor_address(self.input_name, self._buffers.input_ptr)
        self._context.set_tensor_address(self.output_name, self._buffers.output_ptr)
        if not self._context.execute_async_v3(self._buffers.stream_handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for '{self.path.name}'")
        out_shape = _dims(self._context.get_tensor_shape(self.output_name))
        return self._buffers.download(out_shape)

    def synchronize(self) -> None:
        """Wait for the runner's CUDA stream."""
        self._buffers.synchronize()
