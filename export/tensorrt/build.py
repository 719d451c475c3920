"""Building TensorRT engines from ONNX (:func:`build_engine`) and the ``trtexec`` lines that rebuild them on the device.

See :mod:`export.tensorrt` for what the build does (explicit batch, one batch profile, precisions, timing cache).
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccpcsa.errors import UserError
from ccpcsa.io.artifacts import atomic_path, atomic_write_bytes, atomic_write_json, sha256_file

from ..metadata import decode_props, get_props
from ..onnx_io import PathLike, first_line, input_signature, is_qdq, load_onnx
from .engine_file import (
    PRECISIONS,
    SIDECAR_FORMAT,
    TIMING_CACHE,
    BatchProfile,
    EngineResult,
    _import_trt,
    engine_name,
    gpu_info,
    sidecar_path_for,
)

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)


def trtexec_commands(
    onnx_path: PathLike,
    int8_onnx_path: PathLike | None = None,
    *,
    profile: BatchProfile | None = None,
    input_name: str = "input",
    input_chw: tuple[int, int, int] = (3, 32, 32),
    workspace_mb: int = 1024,
    timing_cache: str | None = TIMING_CACHE,
    stem: str = "model",
) -> dict[str, str]:
    """``trtexec`` command lines that rebuild the engines on an edge device (e.g. a Jetson).

    Returns ``{"fp16": cmd}`` plus ``{"int8": cmd}`` when ``int8_onnx_path`` (a QDQ model) is given.
    Both use the same ``--minShapes/--optShapes/--maxShapes`` as :func:`build_engine`, a workspace
    pool of ``workspace_mb`` MiB and (optionally) a shared timing cache. The engine is written next
    to its ONNX file as ``<stem>.<precision>.engine`` (``model.fp16.engine``, ``model.int8.engine``: the names
    ``report.json``, the bundle's ``promise.json`` and ``infer.py --runtime tensorrt --model`` use; ``stem="baseline"``
    for the unpruned references the device times them against). Pure string building: needs no TensorRT.
    """
    profile = profile or BatchProfile()
    shapes = {k: "x".join(str(d) for d in v) for k, v in profile.shapes(input_chw).items()}

    def command(src: PathLike, precision: str, flags: list[str]) -> str:
        p = Path(src)
        engine = p.with_name(engine_name(stem, precision))
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
    cache_path = Path(timing_cache) if timing_cache is not None else Path(dest).with_name(TIMING_CACHE)
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
