"""A TensorRT engine as an artifact, and whether it can be built or run here.

Precisions, the batch profile, a build's result, the JSON sidecar (``<name>.engine.json``) and its check
(:func:`check_sidecar`, a pure function: a serialized engine only runs with the TensorRT version and GPU model that
built it); TensorRT (>= 10) and the GPU are looked up lazily (:func:`tensorrt_unavailable_reason`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ccpcsa.errors import UserError

from ..onnx_io import PathLike, first_line

PRECISIONS = ("fp32", "fp16", "int8")
SIDECAR_FORMAT = "ccpcsa-trt-engine/1"
MIN_TRT_MAJOR = 10
TIMING_CACHE = "timing.cache"  #: the timing cache file a build reuses and updates, beside the engines by default
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


def engine_name(stem: str, precision: str) -> str:
    """The file name of an engine built from ``<stem>``'s ONNX file: ``<stem>.<precision>.engine`` (``model.fp16.engine``,
    ``baseline.int8.engine``)."""
    return f"{stem}.{precision}.engine"


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
