"""Shared by the benchmarks: the machine description (cores, CPU model, memory, GPU, library versions) and the
results file ``bench/results/<date>-<host>[-quick].json`` that every benchmark merges its results into."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "onnxruntime", "onnx", "onnxsim", "torch-pruning", "numpy", "matplotlib")


def cpu_model() -> str:
    """``lscpu``'s "Model name" (falls back to /proc/cpuinfo, then :func:`platform.processor`)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def library_versions() -> dict[str, str | None]:
    """Installed distribution versions of the libraries that shape the numbers (None when absent)."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    """Host, cores (logical and usable by this process), CPU model, its SIMD level (AVX-512 / AVX2, VNNI or not: what
    sets ``round_to: auto`` and the INT8 kernels), memory, GPU (if torch sees one), Python, libraries."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "gpu": None,
    }
    from ccpcsa.surgery.alignment import simd_label

    info["simd"] = simd_label()
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def repo_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the repository root first on ``PYTHONPATH`` (and ``extra`` added): for the
    subprocesses a benchmark starts (``python -m pipeline``, ``bench/*.py``)."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(extra or {})}


def p50(fmt: dict[str, Any] | None, batch: str) -> float | None:
    """The p50 latency (ms) at ``batch`` of one format record ``{"latency_ms": {"1": {"p50": …}}}``, or None."""
    return (((fmt or {}).get("latency_ms") or {}).get(batch) or {}).get("p50")


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is 0 (a speedup is old latency / new latency)."""
    return a / b if a is not None and b else None


def results_stem(quick: bool, date: str | None = None, host: str | None = None) -> str:
    """``<date>-<host>`` (``-quick`` appended for quick presets), the stem of every result file of one benchmark session."""
    stem = f"{date or time.strftime('%Y-%m-%d')}-{host or socket.gethostname()}"
    return stem + "-quick" if quick else stem


def merge_results(path: Path, updates: dict[str, Any], *, quick: bool, command: str) -> Path:
    """Merge ``updates`` into ``results`` of the JSON file at ``path`` (created when absent) and write it atomically.

    Top-level ``date``, ``host``, ``quick``, ``command`` and ``machine`` are refreshed; other benchmarks'
    results already in the file are kept, so ``python -m bench --only X`` never erases ``Y``.
    """
    from ccpcsa.io.artifacts import atomic_write_text

    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
    data.update({"date": data.get("date") or time.strftime("%Y-%m-%d"), "host": socket.gethostname(), "quick": quick,
                 "command": command, "machine": machine_info()})
    data.setdefault("results", {}).update(updates)
    out = atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")  # atomic; indent 1 keeps it diffable and small
    out.chmod(0o644)  # a result to commit, not a secret (the atomic writer creates files 0600)
    return out


#: the INT8 flavours :func:`export_formats` can write: key → (file suffix, ``quantize_int8``'s activations): ``int8`` is
#: S8S8 (signed symmetric activations, the TensorRT flavour), ``int8_cpu`` U8S8 (unsigned asymmetric activations, every
#: conv a ``QLinearConv`` on onnxruntime's CPU provider) — the pipeline's ``model.int8.onnx`` / ``model.int8.cpu.onnx``.
INT8_FLAVOURS = {"int8": ("int8", "int8"), "int8_cpu": ("int8.cpu", "uint8")}


def export_formats(model: Any, work: Path, tag: str, meta: Any, calib: Any,
                   int8: Sequence[str] = ("int8", "int8_cpu")) -> dict[str, Path]:
    """The pipeline's export chain for a benchmark's model: ``model`` → ONNX ``<work>/<tag>.onnx`` → onnxsim
    ``<tag>.sim.onnx`` (key ``fp32``) → per key of ``int8`` (:data:`INT8_FLAVOURS`) a per-channel MinMax QDQ model
    calibrated on all of ``calib`` (normalized training images, ``(N, C, H, W)``). ``meta``: the
    :class:`export.metadata.DeployMetadata` embedded in the files. Returns ``{key: path}``."""
    from export.onnx_export import export_onnx
    from export.quantize import quantize_int8
    from export.simplify import simplify_onnx

    unknown = sorted(set(int8) - set(INT8_FLAVOURS))
    if unknown:
        raise ValueError(f"unknown INT8 flavour(s) {unknown}; choose from {sorted(INT8_FLAVOURS)}")
    work.mkdir(parents=True, exist_ok=True)
    raw, sim = work / f"{tag}.onnx", work / f"{tag}.sim.onnx"
    export_onnx(model, raw, meta)
    simplify_onnx(raw, sim)
    out = {"fp32": sim}
    for key in int8:
        suffix, activations = INT8_FLAVOURS[key]
        out[key] = work / f"{tag}.{suffix}.onnx"
        quantize_int8(sim, out[key], calib, num_calibration=len(calib), activations=activations)
    return out


def randomize_batchnorm(model: Any) -> Any:
    """Give every ``BatchNorm2d`` of ``model`` non-trivial statistics and shift (running mean ~ U(−0.5, 0.5), running
    variance ~ U(0.5, 2), bias ~ U(−0.2, 0.2), from torch's current RNG), in place, so that a surgery that mis-wires a
    channel changes the outputs of an untrained model (fresh BN layers are the identity up to ε). Returns ``model``."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    return model
