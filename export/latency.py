"""Latency harness shared by every runner (PyTorch, onnxruntime, TensorRT).

Per batch size: ``warmup`` untimed runs, then timed runs until ``iters`` are done or
``max_seconds`` have elapsed (whichever first, but at least ``min_iters``). Each timed run is
``runner.run(batch)`` followed by ``runner.synchronize()`` (CUDA-synchronized on GPU, a no-op on
CPU), measured with ``time.perf_counter_ns``. The input is a fixed random normal batch, created
outside the timed region. Reported per batch size: p50/p90/p95/p99 (linear-interpolated
percentiles), mean, min and max in milliseconds, and ``images_per_s = batch_size / mean``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ccpcsa.errors import UserError

from .runtime import Runner

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
        """The stats for ``batch_size`` (``KeyError`` if it was not measured)."""
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


def measure_interleaved(runners: dict[str, Runner], *, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, rounds: int = 5,
                        warmup: int = 5, iters: int = 30, max_seconds: float | None = 10.0,
                        seed: int = 0) -> dict[str, dict[int, LatencyStats]]:
    """Time several runners *interleaved*: per batch size, ``rounds`` rounds in which every runner runs
    ``max(1, iters // rounds)`` timed calls in turn, so drifting load on shared cores hits all of them alike; each
    runner's samples of all rounds are pooled into one :class:`LatencyStats` (``max_seconds`` bounds each runner's
    share of a round). The way to compare a pruned model with its unpruned reference on a busy machine."""
    if rounds < 1 or iters < 1:
        raise UserError(f"latency: need rounds >= 1 and iters >= 1 (got {rounds}, {iters})")
    rng = np.random.default_rng(seed)
    out: dict[str, dict[int, LatencyStats]] = {k: {} for k in runners}
    per_round = max(1, iters // rounds)
    for bs in batch_sizes:
        batches = {}
        for k, r in runners.items():
            c, h, w = r.info.input_chw
            batches[k] = rng.standard_normal((bs, c, h, w), dtype=np.float32)
            for _ in range(warmup):
                r.run(batches[k])
            r.synchronize()
        samples: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(rounds):
            for k, r in runners.items():
                deadline = time.perf_counter() + max_seconds / rounds if max_seconds is not None else None
                for _ in range(per_round):
                    t0 = time.perf_counter_ns()
                    r.run(batches[k])
                    r.synchronize()
                    samples[k].append((time.perf_counter_ns() - t0) / 1e6)
                    if deadline is not None and time.perf_counter() > deadline:
                        break
        for k in runners:
            out[k][bs] = latency_stats(samples[k], bs, warmup)
    return out
