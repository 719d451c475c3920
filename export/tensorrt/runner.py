"""Running a serialized TensorRT engine: :class:`TrtRunner` (the :class:`~export.runtime.Runner` interface) and its
device buffers (pycuda, or torch CUDA tensors without pycuda)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ccpcsa.errors import UserError
from ccpcsa.io.artifacts import sha256_file

from ..onnx_io import PathLike
from ..runtime import Runner, RunnerInfo
from .engine_file import _import_trt, check_sidecar, gpu_info, load_sidecar

if TYPE_CHECKING:
    import tensorrt as trt


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
