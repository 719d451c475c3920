"""Latency harness shared by every runner (PyTorch, onnxruntime, TensorRT).

Per batch size: ``warmup`` untimed runs, then timed runs until ``iters`` are done or
``max_seconds`` have elapsed (whichever first, but at least ``min_iters``). Each timed run is
``runner.run(batch)`` followed by ``runner.synchronize()`` (CUDA-synchronized on GPU, a no-op on
CPU), timed with ``time.perf_counter_ns``. The input is a fixed random normal batch, created
outside the timed region. Reported per batch size: p50/p90/p95/p99 (linear-interpolated
percentiles), mean, min and max in milliseconds, and ``images_per_s = batch_size / mean``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ccpcsa.errors import UserError

from .edge.timing import OtherLoad, calls_for_seconds, interleaved_rounds, paired_calls, paired_ratio
from .runtime import Runner

__all__ = ["OtherLoad", "calls_for_seconds", "interleaved_rounds", "paired_ratio"]  # the timing protocol lives in edge.timing

DEFAULT_BATCH_SIZES = (1, 32)


@dataclass(frozen=True)
class LatencyStats:
    """Timing summary for one batch size (milliseconds per batch)."""

    batch_size: int
    iterations: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float


@dataclass(frozen=True)
class LatencyReport:
    """Latency of one runner over several batch sizes, with the runner's description and thread count."""

    runner: dict[str, Any]
    threads: int | None
    results: list[LatencyStats] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"runner": self.runner, "threads": self.threads, "results": [asdict(r) for r in self.results]}

    def by_batch(self, batch_size: int) -> LatencyStats:
        """The stats for ``batch_size`` (``KeyError`` if it was not timed)."""
        for r in self.results:
            if r.batch_size == batch_size:
                return r
        raise KeyError(batch_size)


def latency_stats(samples_ms: Sequence[float], batch_size: int, warmup: int = 0) -> LatencyStats:
    """Summarize per-batch latencies ``samples_ms`` (ms): percentiles, mean/min/max, images/s.

    ``images_per_s = batch_size * 1000 / mean_ms``. Raises ``ValueError`` on an empty sample.
    """
    if len(samples_ms) == 0:
        raise ValueError("no latency samples")
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p95, p99 = (float(v) for v in np.percentile(a, [50, 90, 95, 99]))
    mean = float(a.mean())
    return LatencyStats(
        batch_size=batch_size,
        iterations=len(a),
        warmup=warmup,
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=mean,
        min_ms=float(a.min()),
        max_ms=float(a.max()),
        images_per_s=batch_size * 1000.0 / mean if mean > 0 else float("inf"),
    )


def measure_latency(
    runner: Runner,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    warmup: int = 5,
    iters: int = 30,
    max_seconds: float | None = 10.0,
    min_iters: int = 5,
    seed: int = 0,
) -> LatencyReport:
    """Time ``runner`` at each of ``batch_sizes`` (see the module docstring for the protocol).

    ``max_seconds`` bounds the timed phase per batch size (``None``: always ``iters`` runs).
    Batch sizes above the runner's ``max_batch`` (e.g. a TensorRT profile) raise
    :class:`UserError` like any invalid input.
    """
    if warmup < 0 or iters < 1 or min_iters < 1:
        raise UserError(f"latency: need warmup >= 0, iters >= 1, min_iters >= 1 (got {warmup}, {iters}, {min_iters})")
    if not batch_sizes or min(batch_sizes) < 1:
        raise UserError(f"latency: batch sizes must be >= 1, got {list(batch_sizes)}")
    rng = np.random.default_rng(seed)
    c, h, w = runner.info.input_chw
    results = []
    for bs in batch_sizes:
        batch = rng.standard_normal((bs, c, h, w), dtype=np.float32)
        for _ in range(warmup):
            runner.run(batch)
        runner.synchronize()
        samples: list[float] = []
        deadline = time.perf_counter() + max_seconds if max_seconds is not None else None
        while len(samples) < iters:
            t0 = time.perf_counter_ns()
            runner.run(batch)
            runner.synchronize()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
            if deadline is not None and len(samples) >= min_iters and time.perf_counter() > deadline:
                break
        results.append(latency_stats(samples, bs, warmup))
    return LatencyReport(runner=runner.info.to_dict(), threads=runner.info.threads, results=results)


@dataclass(frozen=True)
class PairedSpeedup:
    """Reference vs new latency at one batch size from interleaved rounds: per round r the ratio
    ``s_r = median(ref calls in r) / median(new calls in r)``; ``speedup = median_r s_r`` with standard error
    ``se = 1.2533 · sd(s_r) / √R`` (the asymptotic SE of a median, normal approximation); ``ref_ms`` / ``new_ms`` are
    the medians over rounds of the per-round medians (absolute times, for the report); ``other_load`` the share of the
    machine's CPU used by other processes meanwhile (:class:`OtherLoad`; None where unknown)."""

    batch_size: int
    rounds: int
    calls_per_round: int
    ref_ms: float
    new_ms: float
    speedup: float
    se: float
    other_load: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def paired_speedup(ref: Runner, new: Runner, *, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, rounds: int = 15,
                   round_seconds: float = 0.03, warmup: int = 5, seed: int = 0) -> dict[int, PairedSpeedup]:
    """How much faster ``new`` runs than ``ref`` at each batch size: :func:`interleaved_rounds` with about
    ``round_seconds`` of ``ref`` calls per round (at least 3 calls, the same count for both), summarized by
    :class:`PairedSpeedup`. Both runners get the same fixed random batch. On onnxruntime CPU create both runners with
    ``spinning=False``: a session's idle pool threads otherwise spin on the cores the other session is timed on."""
    if rounds < 2:
        raise UserError(f"latency: a paired speedup needs rounds >= 2, got {rounds}")
    rng = np.random.default_rng(seed)
    c, h, w = ref.info.input_chw
    out = {}
    for bs in batch_sizes:
        x = rng.standard_normal((bs, c, h, w), dtype=np.float32)
        m = paired_calls(_timed_call(ref, x), _timed_call(new, x), rounds=rounds, round_seconds=round_seconds, warmup=warmup)
        out[bs] = PairedSpeedup(batch_size=bs, rounds=rounds, calls_per_round=int(m["calls_per_round"] or 0),
                                ref_ms=float(m["ref_ms"] or 0), new_ms=float(m["new_ms"] or 0), speedup=float(m["speedup"] or 0),
                                se=float(m["se"] or 0), other_load=m["other_load"])
    return out


def _timed_call(runner: Runner, batch: np.ndarray) -> Callable[[], None]:
    def call() -> None:
        runner.run(batch)
        runner.synchronize()
    return call


def runtime_speedups(runtime: str, ref: str | Path, new: str | Path, macs_ratio: float, *, threads: int,
                     batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, rounds: int = 21, warmup: int = 5) -> dict[str, dict[str, Any]]:
    """The ONNX model ``new`` vs ``ref`` on ``runtime`` (:data:`export.runtime.CPU_RUNTIMES`; ``threads`` threads,
    onnxruntime's spinning off in both sessions), by :func:`paired_speedup`: ``{batch: {unpruned_ms, pruned_ms, speedup,
    speedup_se, rounds, other_load, flops_ratio, efficiency}}`` with efficiency = speedup / ``macs_ratio`` (1.0: the
    latency fell exactly as the MACs did)."""
    from .runtime import onnx_runner

    t = paired_speedup(onnx_runner(runtime, ref, threads=threads, spinning=False),
                       onnx_runner(runtime, new, threads=threads, spinning=False),
                       batch_sizes=batch_sizes, warmup=warmup, rounds=rounds)
    return {str(b): {"unpruned_ms": m.ref_ms, "pruned_ms": m.new_ms, "speedup": m.speedup, "speedup_se": m.se,
                     "rounds": m.rounds, "other_load": m.other_load, "flops_ratio": macs_ratio,
                     "efficiency": m.speedup / macs_ratio} for b, m in t.items()}

