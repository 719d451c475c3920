"""The interleaved timing protocol, shared by the pipeline's speed gates, the latency tables and the target probe.

Standalone (numpy and the standard library only): the edge bundle ships this file beside ``target_probe.py`` and
``validate_on_device.py``. Two or more calls are timed in turns within each round (forward order in even rounds,
reverse in odd ones) so that drifting machine load hits them alike, and are compared per round: the speedup of one over
another is the median over rounds of the per-round ratio of medians, with the asymptotic standard error of a median.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np


def interleaved_rounds(calls: Sequence[Callable[[], object]], *, rounds: int, per_round: Sequence[int],
                       warmup: int = 2) -> list[list[list[float]]]:
    """The one interleaved timer (pipeline speed gates, latency tables, probes): ``rounds`` rounds, in each every
    ``calls[i]`` runs ``warmup`` untimed then ``per_round[i]`` timed times in turn — forward order in even rounds,
    reverse in odd ones, so neither side always runs first after the other. Returns ``samples[i][r]``: the
    milliseconds of each timed call of ``calls[i]`` in round ``r``. Drifting machine load hits every call alike
    within a round; compare them per round (:func:`paired_ratio`). Raises ``ValueError`` on a count < 1."""
    if rounds < 1 or any(n < 1 for n in per_round) or len(per_round) != len(calls):
        raise ValueError(f"latency: need rounds >= 1 and one per-round count >= 1 per call (got {rounds}, {list(per_round)})")
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


def paired_ratio(ref_rounds: Sequence[Sequence[float]], new_rounds: Sequence[Sequence[float]]) -> tuple[float, float]:
    """``(median_r s_r, SE)`` of the per-round ratios ``s_r = median(ref_r) / median(new_r)``, with
    ``SE = 1.2533 · sd(s_r) / √R`` (the asymptotic SE of a median, normal approximation); SE 0 with a single round."""
    s = np.array([np.median(a) / np.median(b) for a, b in zip(ref_rounds, new_rounds, strict=True)], dtype=np.float64)
    se = 1.2533 * float(s.std(ddof=1)) / float(np.sqrt(len(s))) if len(s) > 1 else 0.0
    return float(np.median(s)), se


def round_medians(rounds: Sequence[Sequence[float]]) -> float:
    """The median over rounds of each round's median (ms): a call's latency from :func:`interleaved_rounds`."""
    return float(np.median([np.median(r) for r in rounds]))


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


#: Share of the machine's CPU used by other processes above which timed speedups are flagged as noisy (the pipeline's
#: validate stage, the benchmarks).
OTHER_LOAD_WARN = 0.1


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


def paired_calls(ref: Callable[[], object], new: Callable[[], object], *, rounds: int = 15, round_seconds: float = 0.03,
                 warmup: int = 5) -> dict[str, float | int | None]:
    """How much faster ``new`` runs than ``ref``: :func:`interleaved_rounds` with about ``round_seconds`` of ``ref``
    calls per round (at least 3, the same count for both) → ``{ref_ms, new_ms, speedup, se, rounds, calls_per_round,
    other_load}`` (speedup and SE by :func:`paired_ratio`; ms by :func:`round_medians`). Raises ``ValueError`` for
    ``rounds < 2``."""
    if rounds < 2:
        raise ValueError(f"latency: a paired speedup needs rounds >= 2, got {rounds}")
    for _ in range(warmup):
        new()
    n = max(3, calls_for_seconds(ref, round_seconds, warmup))
    with OtherLoad() as load:
        ref_s, new_s = interleaved_rounds([ref, new], rounds=rounds, per_round=[n, n])
    speed, se = paired_ratio(ref_s, new_s)
    return {"ref_ms": round_medians(ref_s), "new_ms": round_medians(new_s), "speedup": speed, "se": se, "rounds": rounds,
            "calls_per_round": n, "other_load": load.share}


def own_times(calls: Sequence[Callable[[], object]], empty: Callable[[], object], *, rounds: int = 5, chunk: int = 16,
              min_seconds: float = 0.02, progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Each call's own milliseconds: ``calls`` timed ``chunk`` at a time in :func:`interleaved_rounds` together with
    ``empty`` (a model that does nothing: the runtime's per-call overhead), each call's median over rounds (of its
    per-round mean over about ``min_seconds`` of calls) minus the overhead's median, floored at 0. What a latency table
    holds: the overhead belongs to the whole model's constant. ``progress(done, total)`` after each chunk."""
    out: list[float] = []
    for i in range(0, len(calls), chunk):
        part = [*calls[i:i + chunk], empty]
        per_round = [calls_for_seconds(c, min_seconds, 3) for c in part]
        samples = interleaved_rounds(part, rounds=rounds, per_round=per_round, warmup=0)
        med = [float(np.median([np.mean(r) for r in per])) for per in samples]
        out += [max(m - med[-1], 0.0) for m in med[:-1]]
        if progress is not None:
            progress(len(out), len(calls))
    return out
