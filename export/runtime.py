"""Runners: one interface to run a classifier from PyTorch, onnxruntime, OpenVINO or TensorRT.

Every runner has ``run(batch) -> logits``, ``synchronize()`` and an ``info`` record (format,
precision, device, threads). :class:`TrtRunner` lives in :mod:`export.tensorrt.runner` (it imports
TensorRT lazily) and follows the same interface.

Input contract (all runners, :func:`validate_batch`): a ``numpy.ndarray`` of shape
``(N, C, H, W)`` with the model's C, H, W and ``N >= 1``, already normalized
(``(pixel/255 - mean) / std``). ``float32`` is used as is; other *float* dtypes (float64, float16)
are cast to float32. Integer and bool arrays are rejected: they are almost always raw uint8
pixels that were not normalized, and silently casting them would give wrong labels.
"""

from __future__ import annotations

import abc
import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from ccpcsa import placement
from ccpcsa.errors import UserError

from .edge.sessions import EdgeError, open_session, ort_options
from .metadata import get_props
from .onnx_io import PathLike, first_line, input_signature, is_qdq, load_onnx

ORT_DEVICES = ("cpu", "cuda", "tensorrt", "auto")


@dataclass(frozen=True)
class RunnerInfo:
    """What a runner is: ``format`` (torch/onnx/tensorrt), ``precision``, ``device``, CPU ``threads``."""

    format: str
    precision: str
    device: str
    threads: int | None
    input_chw: tuple[int, int, int]
    name: str
    max_batch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short human label, e.g. ``onnx/int8-qdq@cpu``."""
        return f"{self.format}/{self.precision}@{self.device}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["input_chw"] = list(self.input_chw)
        d["label"] = self.label
        return d


def validate_batch(
    batch: object, chw: tuple[int, int, int], *, who: str, max_batch: int | None = None
) -> np.ndarray:
    """Return ``batch`` as a C-contiguous float32 ``(N, C, H, W)`` array or raise a one-line UserError.

    Checks, in order: ndarray type, rank 4, dtype (floats cast to float32; ints/bools rejected),
    ``C`` then ``(H, W)`` against ``chw``, ``1 <= N <= max_batch``. Each message names the
    expected and the actual value.
    """
    c, h, w = chw
    expected = f"(N, {c}, {h}, {w}) float32 NCHW"
    if not isinstance(batch, np.ndarray):
        raise UserError(f"{who}: input must be a numpy.ndarray {expected}, got {type(batch).__name__}")
    if batch.ndim != 4:
        raise UserError(f"{who}: input must have 4 dims {expected}, got {batch.ndim} dims with shape {batch.shape}")
    if not np.issubdtype(batch.dtype, np.floating):
        raise UserError(
            f"{who}: input dtype must be float32 (normalized), got {batch.dtype}; "
            "normalize pixels first: (x/255 - mean) / std"
        )
    if batch.shape[1] != c:
        raise UserError(f"{who}: input must have {c} channels in dim 1 {expected}, got shape {batch.shape}")
    if tuple(batch.shape[2:]) != (h, w):
        raise UserError(f"{who}: input spatial size must be {h}x{w} {expected}, got shape {batch.shape}")
    if batch.shape[0] < 1:
        raise UserError(f"{who}: input batch is empty; expected N >= 1")
    if max_batch is not None and batch.shape[0] > max_batch:
        raise UserError(f"{who}: batch of {batch.shape[0]} exceeds the maximum of {max_batch}")
    return np.ascontiguousarray(batch, dtype=np.float32)


class Runner(abc.ABC):
    """Common interface: validated ``run``, ``synchronize`` and ``info``."""

    info: RunnerInfo

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``(N, num_classes)`` float32 for a normalized ``(N, C, H, W)`` batch (see module doc)."""
        x = validate_batch(batch, self.info.input_chw, who=self.info.name, max_batch=self.info.max_batch)
        return self._run(x)

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run a validated float32 batch."""

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on CPU); latency timing calls it after each run."""
        return None

    def close(self) -> None:
        """Release resources (sessions, device buffers); the default does nothing."""
        return None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """On CUDA, run convolutions and matmuls in IEEE FP32 (TF32 off) inside the block, restoring the flags after:
    a ``fp32`` runner must agree with onnxruntime's FP32 within the parity gate (TF32 rounds to 10 mantissa bits).
    A no-op elsewhere."""
    if device.type != "cuda":
        yield
        return
    conv, matmul = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision"):
        # torch ≥ 2.9: only the fp32_precision API — mixing it with the legacy allow_tf32 flags is a RuntimeError
        saved = conv.fp32_precision, matmul.fp32_precision
        conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        legacy = torch.backends.cudnn.allow_tf32, matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = legacy


class TorchRunner(Runner):
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode``.

    ``threads`` sets ``torch.set_num_threads`` (process-wide) when given; the effective CPU thread
    count is recorded either way. ``device`` is any torch device string (``"cpu"``, ``"cuda"``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_size: int | tuple[int, int] = 32,
        channels: int = 3,
        device: str = "cpu",
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise UserError(f"TorchRunner: bad device '{device}': {first_line(exc)}") from exc
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("TorchRunner: device 'cuda' requested but torch sees no CUDA GPU")
        if threads is not None:
            if threads < 1:
                raise UserError(f"TorchRunner: threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        self.model = placement.place(model, self.device).eval()
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        dev = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.info = RunnerInfo(
            format="torch",
            precision="fp32",
            device=dev,
            threads=torch.get_num_threads() if self.device.type == "cpu" else None,
            input_chw=(channels, h, w),
            name=name or f"TorchRunner({type(model).__name__})",
        )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), ieee_fp32(self.device):
            out = self.model(torch.from_numpy(batch).to(self.device))
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def synchronize(self) -> None:
        """``torch.cuda.synchronize`` on a CUDA device; no-op on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class TorchCudaGraphRunner(TorchRunner):
    """:class:`TorchRunner` on CUDA whose forward pass is replayed from a CUDA graph, one graph per batch size.

    The first run at a batch size warms the model up on a side stream and captures ``model(static_input)``;
    each run then copies the batch into the static input, replays the graph and copies the logits back —
    no per-layer kernel launches from Python. Results equal the eager model's (same kernels, same order).
    Raises :class:`UserError` without a CUDA GPU.
    """

    def __init__(self, model: nn.Module, *, input_size: int | tuple[int, int] = 32, channels: int = 3,
                 device: str = "cuda", name: str | None = None) -> None:
        if not torch.cuda.is_available():
            raise UserError("TorchCudaGraphRunner: needs a CUDA GPU, but torch sees none")
        super().__init__(model, input_size=input_size, channels=channels, device=device,
                         name=name or f"TorchCudaGraphRunner({type(model).__name__})")
        if self.device.type != "cuda":
            raise UserError(f"TorchCudaGraphRunner: device must be cuda or cuda:N, got '{device}'")
        self.info = RunnerInfo(**{**asdict(self.info), "precision": "fp32", "extra": {"cuda_graph": True}})
        self._graphs: dict[int, tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def _capture(self, n: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        c, h, w = self.info.input_chw
        static_in = torch.zeros(n, c, h, w, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):  # warm-up (cuDNN algorithm choice, allocator) outside the graph
                self.model(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_out = self.model(static_in)
        return graph, static_in, static_out

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if n not in self._graphs:
            with ieee_fp32(self.device):
                self._graphs[n] = self._capture(n)
        graph, static_in, static_out = self._graphs[n]
        static_in.copy_(torch.from_numpy(batch))  # the captured kernels are IEEE FP32 (captured under ieee_fp32)
        graph.replay()
        return np.asarray(static_out.float().cpu().numpy(), dtype=np.float32)

    def close(self) -> None:
        """Drop the captured graphs and their static buffers."""
        self._graphs.clear()


def _ort_providers(device: str) -> list[str]:
    available = ort.get_available_providers()
    wanted = {
        "cpu": ["CPUExecutionProvider"],
        "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        # auto: CUDA when present. The TensorRT EP is opt-in: it builds its own engine on first run.
        "auto": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    }[device]
    if device in ("cuda", "tensorrt") and wanted[0] not in available:
        raise UserError(f"OrtRunner: device '{device}' needs {wanted[0]}, but onnxruntime has only {available}")
    return [p for p in wanted if p in available]


def ort_session_options(threads: int, *, spinning: bool = True) -> ort.SessionOptions:
    """The CPU session options every onnxruntime session of the project uses (:func:`export.edge.sessions.ort_options`,
    the same a bundled script uses on the target): ``threads`` intra-op threads, one inter-op thread (sequential
    execution), warnings off, full graph optimization; ``spinning=False`` sets ``session.intra_op.allow_spinning = 0``
    (idle pool threads sleep instead of busy-waiting)."""
    return ort_options(threads, spinning=spinning)


class OrtRunner(Runner):
    """Runs an ONNX model with onnxruntime (FP32 or INT8 QDQ).

    ``threads`` is the intra-op thread count (default: ``os.cpu_count()``), set explicitly and
    recorded; inter-op parallelism is 1 (sequential execution). ``device`` picks providers:
    ``"cpu"``, ``"cuda"``, ``"tensorrt"`` (TensorRT EP, then CUDA, then CPU) or ``"auto"`` (CUDA
    when onnxruntime has it, else CPU). The model file is validated first: a missing, truncated or
    non-ONNX file is a :class:`UserError`. ``spinning=False`` stops idle intra-op threads from busy-waiting
    (``session.intra_op.allow_spinning = 0``): needed when two sessions are timed in turn on the same cores
    (:func:`export.latency.paired_speedup`), where one session's spinning pool otherwise slows the other.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        threads: int | None = None,
        device: str = "cpu",
        graph_optimization: bool = True,
        spinning: bool = True,
    ) -> None:
        if device not in ORT_DEVICES:
            raise UserError(f"OrtRunner: unknown device '{device}'; known: {', '.join(ORT_DEVICES)}")
        threads = threads if threads is not None else (os.cpu_count() or 1)
        if threads < 1:
            raise UserError(f"OrtRunner: threads must be >= 1, got {threads}")
        self.path = Path(path)
        model = load_onnx(self.path)
        self.input_name, batch, chw = input_signature(model, what=f"'{self.path}'")
        props = get_props(model)
        precision = props.get("precision") or ("int8-qdq" if is_qdq(model) else "fp32")
        opts = ort_session_options(threads, spinning=spinning)
        if not graph_optimization:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=_ort_providers(device))
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"onnxruntime cannot load '{self.path}': {first_line(exc)}") from exc
        providers = self.session.get_providers()
        self.output_name = self.session.get_outputs()[0].name
        self.info = RunnerInfo(
            format="onnx",
            precision=precision,
            device={"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
                    "TensorrtExecutionProvider": "tensorrt"}.get(providers[0], providers[0]),
            threads=threads,
            input_chw=chw,
            name=f"OrtRunner({self.path.name})",
            max_batch=batch if isinstance(batch, int) and batch > 0 else None,
            extra={"providers": providers, "path": str(self.path), "spinning": spinning},
        )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)


class OvRunner(Runner):
    """Runs an ONNX (or OpenVINO IR) model on OpenVINO (``device`` ``cpu`` by default) through
    :func:`export.edge.sessions.open_session` — the very session a bundled script opens on the target: LATENCY hint,
    one stream, ``threads`` inference threads, FP32 execution for FP32 graphs (``INFERENCE_PRECISION_HINT f32``), the
    model reshaped to each call's batch size. INT8 QDQ files run on OpenVINO's own INT8 kernels where its
    transformations fuse the Q/DQ pairs."""

    def __init__(self, path: PathLike, *, threads: int | None = None, device: str = "cpu") -> None:
        threads = threads if threads is not None else (os.cpu_count() or 1)
        if threads < 1:
            raise UserError(f"OvRunner: threads must be >= 1, got {threads}")
        self.path = Path(path)
        model = load_onnx(self.path) if self.path.suffix == ".onnx" else None
        chw: tuple[int, int, int]
        precision = "fp32"
        if model is not None:
            _, _, chw = input_signature(model, what=f"'{self.path}'")
            precision = get_props(model).get("precision") or ("int8-qdq" if is_qdq(model) else "fp32")
        try:
            self.session = open_session(f"openvino-{device}", self.path, threads=threads)
        except EdgeError as exc:
            raise UserError(str(exc)) from exc
        if model is None:
            c, h, w = (int(d or 0) for d in self.session.input_shape[1:4])
            chw = (c, h, w)
        self.info = RunnerInfo(format="onnx", precision=precision, device=f"openvino-{device}", threads=threads,
                               input_chw=chw, name=f"OvRunner({self.path.name})",
                               extra={"runtime": f"openvino-{device}", "path": str(self.path), **self.session.properties})

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(batch)

    def close(self) -> None:
        """Drop the compiled models."""
        self.session.close()


#: The runtimes ``export.runtimes`` may name: every ONNX artifact is evaluated and timed on each.
CPU_RUNTIMES = ("onnxruntime-cpu", "openvino-cpu")


def onnx_runner(runtime: str, path: PathLike, *, threads: int, spinning: bool = True) -> Runner:
    """A runner of the ONNX file ``path`` on ``runtime`` (:data:`CPU_RUNTIMES`): a plain session of that runtime, the
    way a user runs the file (onnxruntime with full graph optimization: INT8 QDQ on its integer kernels)."""
    if runtime == "onnxruntime-cpu":
        return OrtRunner(path, threads=threads, spinning=spinning)
    if runtime == "openvino-cpu":
        return OvRunner(path, threads=threads)
    from ccpcsa.errors import unknown

    raise unknown("export.runtimes", runtime, CPU_RUNTIMES)
