"""Latency harness shared by every runner (PyTorch, onnxruntime, TensorRT).

Per batch size: ``warmup`` untimed runs, then timed runs until ``iters`` are done or
``max_seconds`` have elapsed (whichever first, but at least ``min_iters``). Each timed run is
``runner.run(batch)`` followed by ``runner.synchronize()`` (CUDA-synchronized on GPU, a no-op on
CPU), measured with ``time.perf_counter_ns``. The input is a fixed random normal batch, created
outside the timed region. Reported per batch size: p50/p90/p95/p99 (linear-interpolated
percentiles), mean, min and max in milliseconds, and ``images_per_s = batch_size / mean``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
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


def interleaved_rounds(calls: Sequence[Callable[[], object]], *, rounds: int, per_round: Sequence[int],
                       warmup: int = 2) -> list[list[list[float]]]:
    """The one interleaved timer (pipeline speed gates, latency tables, probes): ``rounds`` rounds, in each every
    ``calls[i]`` runs ``warmup`` untimed then ``per_round[i]`` timed times in turn — forward order in even rounds,
    reverse in odd ones, so neither side always runs first after the other. Returns ``samples[i][r]``: the
    milliseconds of each timed call of ``calls[i]`` in round ``r``. Drifting machine load hits every call alike
    within a round; compare them per round (:func:`paired_speedup`)."""
    if rounds < 1 or any(n < 1 for n in per_round) or len(per_round) != len(calls):
        raise UserError(f"latency: need rounds >= 1 and one per-round count >= 1 per call (got {rounds}, {list(per_round)})")
    samples: list[list[list[float]]] = [[] for _ in calls]
    for r in range(rounds):
        order = range(len(calls)) if r % 2 == 0 else range(len(calls) - 1, -1, -1)
        for i in order:
            for _ in range(warmup):
                calls[i]()
            got = []
            for _ in range(per_round[i]):
                t0 = time.perf_counter_ns()
                calls[i]()
                got.append((time.perf_counter_ns() - t0) / 1e6)
            samples[i].append(got)
    return samples


def calls_for_seconds(call: Callable[[], object], seconds: float, warmup: int = 3) -> int:
    """How many calls of ``call`` fill about ``seconds`` (at least 1), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    t0 = time.perf_counter()
    call()
    return max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))


def _cpu_jiffies() -> tuple[float, float] | None:
    """(busy seconds of the whole machine, seconds of this process) from /proc/stat and os.times(); None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    t = os.times()
    return (sum(fields[:8]) - idle) / hz, t.user + t.system


class OtherLoad:
    """Context manager: the share of the machine's CPU capacity used by *other* processes while it was open,
    ``(Δ busy CPU seconds of the machine − Δ CPU seconds of this process) / (Δ wall seconds × cores)`` from
    ``/proc/stat`` (``share`` is None where that file does not exist). 0 on a quiet machine; 0.5 on 2 cores means
    one core was busy with something else — timings taken then compare models on a shared machine."""

    def __init__(self) -> None:
        self.share: float | None = None

    def __enter__(self) -> OtherLoad:
        self._t0, self._c0 = time.perf_counter(), _cpu_jiffies()
        return self

    def __exit__(self, *exc: object) -> None:
        c1, wall = _cpu_jiffies(), time.perf_counter() - self._t0
        if self._c0 is None or c1 is None or wall <= 0:
            return
        other = (c1[0] - self._c0[0]) - (c1[1] - self._c0[1])
        self.share = min(1.0, max(0.0, other / (wall * (os.cpu_count() or 1))))


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


def paired_ratio(ref_rounds: Sequence[Sequence[float]], new_rounds: Sequence[Sequence[float]]) -> tuple[float, float]:
    """``(median_r s_r, SE)`` of the per-round ratios ``s_r = median(ref_r) / median(new_r)`` (see :class:`PairedSpeedup`);
    SE 0 with a single round."""
    s = np.array([np.median(a) / np.median(b) for a, b in zip(ref_rounds, new_rounds, strict=True)], dtype=np.float64)
    se = 1.2533 * float(s.std(ddof=1)) / np.sqrt(len(s)) if len(s) > 1 else 0.0
    return float(np.median(s)), se


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
        calls = [_timed_call(ref, x), _timed_call(new, x)]
        for _ in range(warmup):
            calls[1]()
        n = max(3, calls_for_seconds(calls[0], round_seconds, warmup))
        with OtherLoad() as load:
            ref_s, new_s = interleaved_rounds(calls, rounds=rounds, per_round=[n, n])
        speed, se = paired_ratio(ref_s, new_s)
        out[bs] = PairedSpeedup(batch_size=bs, rounds=rounds, calls_per_round=n,
                                ref_ms=float(np.median([np.median(v) for v in ref_s])),
                                new_ms=float(np.median([np.median(v) for v in new_s])), speedup=speed, se=se,
                                other_load=load.share)
    return out


def _timed_call(runner: Runner, batch: np.ndarray) -> Callable[[], None]:
    def call() -> None:
        runner.run(batch)
        runner.synchronize()
    return call


def ort_speedups(ref: str | Path, new: str | Path, macs_ratio: float, *, threads: int,
                 batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, rounds: int = 21, warmup: int = 5) -> dict[str, dict[str, Any]]:
    """The ONNX model ``new`` vs ``ref`` on onnxruntime CPU (``threads`` intra-op threads, spinning off in both
    sessions), by :func:`paired_speedup`: ``{batch: {unpruned_ms, pruned_ms, speedup, speedup_se, rounds, other_load,
    flops_ratio, efficiency}}`` with efficiency = speedup / ``macs_ratio`` (1.0: the latency fell exactly as the MACs did)."""
    from .runtime import OrtRunner

    t = paired_speedup(OrtRunner(ref, threads=threads, spinning=False), OrtRunner(new, threads=threads, spinning=False),
                       batch_sizes=batch_sizes, warmup=warmup, rounds=rounds)
    return {str(b): {"unpruned_ms": m.ref_ms, "pruned_ms": m.new_ms, "speedup": m.speedup, "speedup_se": m.se,
                     "rounds": m.rounds, "other_load": m.other_load, "flops_ratio": macs_ratio,
                     "efficiency": m.speedup / macs_ratio} for b, m in t.items()}
