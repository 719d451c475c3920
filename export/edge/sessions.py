"""Open a model on a named runtime and say what that runtime and device are, with numpy and the runtime only.

Standalone: the edge bundle ships this file beside ``infer.py``, ``target_probe.py`` and ``validate_on_device.py``;
in the project, :class:`export.runtime.OvRunner` and the ONNX session options come from here. Runtimes by name:

- ``onnxruntime-cpu`` (also ``onnxruntime-cuda``, ``onnxruntime-tensorrt``, ``onnxruntime-<provider>``): an
  ``InferenceSession`` with ``threads`` intra-op threads, sequential execution, full graph optimization — what a
  plain session does, so INT8 QDQ files run on the CPU's integer kernels.
- ``openvino-cpu`` (also ``openvino-<device>``): ``ov.Core().compile_model`` with the LATENCY hint, one stream,
  ``threads`` inference threads and FP32 execution for FP32 files (``INFERENCE_PRECISION_HINT f32``: on AMX / ARM CPUs
  OpenVINO otherwise runs FP32 models in bf16/fp16). The model is reshaped to the batch size of each call (compiled
  once per batch size): static shapes are OpenVINO CPU's fast path. ``.xml`` (OpenVINO IR) files open too.
- ``tensorrt``: a serialized ``.engine`` through TensorRT and pycuda, imported only then.

Each runtime is imported when a session is opened; a missing one is an :class:`EdgeError` naming the package.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES = ("onnxruntime-cpu", "openvino-cpu", "tensorrt")
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt pycuda"}


def _first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type name (this folder runs without the project, so it keeps its own
    copy of ``ccpcsa.errors.first_line``)."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class EdgeError(Exception):
    """A one-line, fixable mistake (missing runtime, unreadable file, wrong input); scripts print it as ``error:``."""


def family(runtime: str) -> str:
    """The runtime's package family: ``onnxruntime``, ``openvino`` or ``tensorrt`` (EdgeError for another name)."""
    head = runtime.split("-", 1)[0]
    if head not in PACKAGES:
        raise EdgeError(f"unknown runtime '{runtime}'; known: onnxruntime-cpu, onnxruntime-<provider>, openvino-cpu, "
                        "openvino-<device>, tensorrt")
    return head


def _import(runtime: str) -> Any:
    fam = family(runtime)
    try:
        if fam == "onnxruntime":
            import onnxruntime as mod
        elif fam == "openvino":
            import openvino as mod
        else:
            import tensorrt as mod
    except ImportError as exc:
        raise EdgeError(f"runtime '{runtime}' is not installed here ({exc}); install it: pip install {PACKAGES[fam]}") from exc
    return mod


def installed(runtime: str) -> bool:
    """Whether ``runtime``'s package imports here."""
    try:
        _import(runtime)
    except EdgeError:
        return False
    return True


@dataclass
class Session:
    """One model opened on one runtime: ``run(x)`` → the first output as float32 for a float32 NCHW batch."""

    runtime: str
    path: str
    threads: int | None
    input_shape: tuple[int | None, ...]
    run_fn: Callable[[np.ndarray], np.ndarray]
    properties: dict[str, Any] = field(default_factory=dict)
    close_fn: Callable[[], None] | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's first output for ``x`` (float32, C-contiguous)."""
        return np.asarray(self.run_fn(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)

    def close(self) -> None:
        """Release the runtime's resources."""
        if self.close_fn is not None:
            self.close_fn()


def ort_options(threads: int, *, spinning: bool = True) -> Any:
    """onnxruntime session options: ``threads`` intra-op threads, one inter-op thread (sequential), warnings off, full
    graph optimization; ``spinning=False`` sets ``session.intra_op.allow_spinning = 0`` (idle pool threads sleep —
    needed when two sessions are timed in turn on the same cores)."""
    ort = _import("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _ort_session(runtime: str, path: Path, threads: int, spinning: bool) -> Session:
    ort = _import(runtime)
    provider = runtime.split("-", 1)[1] if "-" in runtime else "cpu"
    name = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
            "openvino": "OpenVINOExecutionProvider", "coreml": "CoreMLExecutionProvider", "dml": "DmlExecutionProvider",
            "xnnpack": "XnnpackExecutionProvider", "qnn": "QNNExecutionProvider"}.get(provider, provider)
    if name not in ort.get_available_providers():
        raise EdgeError(f"runtime '{runtime}': onnxruntime here has no {name} (it has {ort.get_available_providers()})")
    try:
        sess = ort.InferenceSession(str(path), sess_options=ort_options(threads, spinning=spinning),
                                    providers=[name, "CPUExecutionProvider"] if name != "CPUExecutionProvider" else [name])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable or invalid files
        raise EdgeError(f"onnxruntime cannot load '{path}': {_first_line(exc)}") from exc
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0].name
    shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
    return Session(runtime, str(path), threads, shape, lambda x: sess.run([out], {inp.name: x})[0],
                   {"onnxruntime": ort.__version__, "providers": sess.get_providers(), "spinning": spinning})


def _ov_session(runtime: str, path: Path, threads: int, precision_hint: str | None) -> Session:
    ov = _import(runtime)
    device = runtime.split("-", 1)[1].upper() if "-" in runtime else "CPU"
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable or invalid files
        raise EdgeError(f"OpenVINO cannot read '{path}': {_first_line(exc)}") from exc
    pshape = model.inputs[0].get_partial_shape()
    shape = tuple(int(d.get_length()) if d.is_static else None for d in pshape)
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if device == "CPU":
        config["INFERENCE_NUM_THREADS"] = threads
    if precision_hint:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    compiled: dict[int, Any] = {}

    def request(n: int) -> Any:
        if n not in compiled:
            m = model.clone()
            m.reshape({m.inputs[0]: [n, *[d or 1 for d in shape[1:]]]})
            try:
                compiled[n] = core.compile_model(m, device, config).create_infer_request()
            except Exception as exc:
                raise EdgeError(f"OpenVINO cannot compile '{path}' for {device}: {_first_line(exc)}") from exc
        return compiled[n]

    def run(x: np.ndarray) -> np.ndarray:
        req = request(x.shape[0])
        req.infer({0: x})
        return np.array(req.get_output_tensor(0).data, copy=True)

    request(1)  # compile once now: a bad file or device fails here, not in the first timed call
    props = {"openvino": ov.__version__, "device": device, **{k: str(v) for k, v in config.items()}}
    return Session(runtime, str(path), threads, shape, run, props, compiled.clear)


def _trt_session(runtime: str, path: Path) -> Session:
    trt = _import(runtime)
    try:
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
        import pycuda.driver as cuda
    except ImportError as exc:
        raise EdgeError(f"runtime 'tensorrt' needs pycuda ({exc}); install it: pip install pycuda") from exc
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise EdgeError(f"TensorRT cannot deserialize '{path}': built by another TensorRT version or GPU? rebuild it "
                        "with build_engine.sh on this device")
    ctx = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    outn = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    stream = cuda.Stream()

    def run(x: np.ndarray) -> np.ndarray:
        ctx.set_input_shape(inp, x.shape)
        out = np.empty(tuple(ctx.get_tensor_shape(outn)), dtype=np.float32)
        d_in, d_out = cuda.mem_alloc(x.nbytes), cuda.mem_alloc(out.nbytes)
        ctx.set_tensor_address(inp, int(d_in))
        ctx.set_tensor_address(outn, int(d_out))
        cuda.memcpy_htod_async(d_in, x, stream)
        ctx.execute_async_v3(stream.handle)
        cuda.memcpy_dtoh_async(out, d_out, stream)
        stream.synchronize()
        return out

    shape = tuple(d if d > 0 else None for d in engine.get_tensor_shape(inp))
    return Session(runtime, str(path), None, shape, run, {"tensorrt": trt.__version__})


def open_session(runtime: str, path: str | Path, *, threads: int | None = None, spinning: bool = True,
                 precision_hint: str | None = "f32") -> Session:
    """``path`` opened on ``runtime`` (module doc) with ``threads`` CPU threads (default: all cores). ``spinning``:
    onnxruntime's idle-thread spinning; ``precision_hint``: OpenVINO's ``INFERENCE_PRECISION_HINT`` (``f32`` keeps an FP32
    model in FP32; None: the device's default). Raises :class:`EdgeError` for a missing file or runtime."""
    p = Path(path)
    if not p.is_file():
        raise EdgeError(f"model file '{p}' does not exist; give a path to a file of the bundle")
    n = threads if threads is not None else (os.cpu_count() or 1)
    if n < 1:
        raise EdgeError(f"threads must be >= 1, got {n}")
    fam = family(runtime)
    if fam == "onnxruntime":
        return _ort_session(runtime, p, n, spinning)
    if fam == "openvino":
        return _ov_session(runtime, p, n, precision_hint)
    return _trt_session(runtime, p)


def cpu_identity() -> dict[str, Any]:
    """This CPU: model name, cores, machine, and the SIMD features runtimes pick kernels by (x86: avx2, avx512f,
    VNNI, AMX; Arm: asimd/neon, dotprod, i8mm, sve)."""
    name = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("model name", "Model", "Hardware") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "fp16")
    return {"cpu": name, "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.system(),
            "simd": [f for f in wanted if f in flags]}


def runtime_identity(runtime: str, threads: int | None = None) -> dict[str, Any]:
    """What a measurement on ``runtime`` depends on: the runtime and its version, the device it runs on (CPU model and
    SIMD features; the GPU for TensorRT / OpenVINO GPU), the thread count."""
    mod = _import(runtime)
    ident: dict[str, Any] = {"runtime": runtime, "version": getattr(mod, "__version__", "unknown"), "threads": threads,
                             **cpu_identity()}
    if family(runtime) == "openvino":
        device = runtime.split("-", 1)[1].upper() if "-" in runtime else "CPU"
        try:
            ident["device"] = str(mod.Core().get_property(device, "FULL_DEVICE_NAME"))
        except Exception:  # a device OpenVINO does not see: the session will say so
            ident["device"] = device
    elif family(runtime) == "tensorrt" or runtime.endswith(("-cuda", "-tensorrt")):
        try:
            import pycuda.autoinit  # noqa: F401
            import pycuda.driver as cuda

            ident["device"] = cuda.Device(0).name()
        except Exception:  # no pycuda or no GPU: the CPU identity stands
            ident["device"] = "GPU (unknown: pycuda not available)"
    else:
        ident["device"] = ident["cpu"]
    return ident


def read_json(path: Path, fix: str) -> Any:
    """The JSON content of ``path``; an :class:`EdgeError` naming the file and ``fix`` when it cannot be read or
    parsed."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise EdgeError(f"cannot read {path} ({exc.strerror}); {fix}") from exc
    except ValueError as exc:
        raise EdgeError(f"{path} is not valid JSON ({exc}); {fix}") from exc
