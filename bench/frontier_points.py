"""Accuracy against *timed* speedup: the frontier of a pruning sweep and where one run sits on it.

A frontier file is the results JSON of ``python -m bench.frontier`` (the criteria benchmark's format): per pruning run
its method (criterion, or the Torch-Pruning anchor), MACs target and ratio, the pruned model's top-1 on the test
images with its standard error, and the pruned-vs-unpruned onnxruntime-CPU speedups timed by the paired timer
(:func:`export.latency.paired_speedup`: median of per-round ratios ± SE) for FP32 and INT8 (U8S8) at each batch size.
A method's line is its points ordered by speedup; a criterion's frontier is the :func:`pareto` front of all its runs
(every allocation and scope); :func:`interpolate` reads either at any speed between two points.
:mod:`bench.frontier_place` places one pipeline run over the frontier of the same model (``report.frontier``),
as an optional section of that run's report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ccpcsa.io.artifacts import atomic_path
from pipeline.records import ReportView, obj

ANCHOR = "torch-pruning"
LABELS = {ANCHOR: "Torch-Pruning (MetaPruner, L2)"}


@dataclass(frozen=True)
class FrontierPoint:
    """One pruned model: ``method`` (the line it belongs to: :func:`method_of` its ``criterion`` and ``allocation``),
    MACs ``target`` (fraction removed) and ``macs_ratio`` (unpruned / pruned), test ``accuracy`` ± ``accuracy_se`` (pp),
    FP32 and INT8 speedups per batch as ``(speedup, se)``; ``other_load``: the largest CPU share other processes took
    while they were timed (above :data:`export.edge.timing.OTHER_LOAD_WARN` the speeds are flagged as noisy);
    ``seeds``: how many training seeds of one recipe the point averages."""

    method: str
    target: float
    macs_ratio: float
    accuracy: float
    accuracy_se: float
    speedup: dict[str, tuple[float, float]] = field(default_factory=dict)
    speedup_int8: dict[str, tuple[float, float]] = field(default_factory=dict)
    int8_accuracy: float | None = None
    minutes: float | None = None
    key: str = ""
    criterion: str = ""
    allocation: str = "global"
    other_load: float | None = None  # most CPU share other processes used while any of its speedups was timed
    seeds: int = 1  # training seeds averaged into this point

    @property
    def label(self) -> str:
        """The method as a legend shows it."""
        return LABELS.get(self.method, self.method)


def _pairs(sp: dict[str, Any] | None) -> dict[str, tuple[float, float]]:
    return {str(b): (float(m["speedup"]), float(m.get("speedup_se") or 0.0)) for b, m in obj(sp).items()
            if m.get("speedup") is not None}


def method_of(run: dict[str, Any]) -> str:
    """A run's method as the frontier draws it: its criterion, with a non-global allocation and a ``scope`` the run sets
    itself (``RunSpec.scope``; unset, the preset's) named after it (``ccpcsa (sensitivity)``, ``l1 (scope all)``), so
    that one recipe's points never join another's line."""
    alloc, scope = run.get("allocation"), run.get("scope")
    parts = ([] if alloc in (None, "", "global") else [str(alloc)]) + ([f"scope {scope}"] if scope else [])
    return f"{run['criterion']} ({', '.join(parts)})" if parts else run["criterion"]


def pool(values: Sequence[float], ses: Sequence[float]) -> tuple[float, float]:
    """``(mean, se)`` of ``n`` measurements of one quantity, each with its own SE: the mean, and the larger of the
    within SE ``√(Σ se_i²) / n`` and the between SE ``sd / √n`` (0 for one value) — one measurement's SE misses what
    varies between measurements (another timing pass, another training seed)."""
    n = len(values)
    mean = sum(values) / n
    within = math.sqrt(sum(se * se for se in ses)) / n
    between = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0
    return mean, max(within, between)


def _recipe(run: dict[str, Any]) -> str:
    """A run's key without its seed (``ccpcsa-t50-rauto-s1-scall`` → ``ccpcsa-t50-rauto-s*-scall``)."""
    key, seed = run.get("key", ""), run.get("seed")
    return key.replace(f"-s{seed}", "-s*", 1) if seed is not None else key


def _mean_of_seeds(points: Sequence[FrontierPoint], seeds: Sequence[int]) -> FrontierPoint:
    """One point for the runs of one recipe that differ only in seed: accuracy and each speedup :func:`pool`-ed
    (mean ± the larger of the runs' SE and the between-seed SE), MACs ratio, INT8 accuracy and minutes averaged,
    the largest other load; key with the seeds (``…-s0+1-…``)."""
    first = points[0]

    def pooled(kind: str) -> dict[str, tuple[float, float]]:
        common = set.intersection(*(set(getattr(p, kind)) for p in points))
        return {b: pool([getattr(p, kind)[b][0] for p in points], [getattr(p, kind)[b][1] for p in points]) for b in common}

    acc, acc_se = pool([p.accuracy for p in points], [p.accuracy_se for p in points])
    int8 = [p.int8_accuracy for p in points if p.int8_accuracy is not None]
    mins = [p.minutes for p in points if p.minutes is not None]
    loads = [p.other_load for p in points if p.other_load is not None]
    key = first.key.replace(f"-s{seeds[0]}", "-s" + "+".join(map(str, seeds)), 1)
    return replace(first, macs_ratio=sum(p.macs_ratio for p in points) / len(points), accuracy=acc, accuracy_se=acc_se,
                   speedup=pooled("speedup"), speedup_int8=pooled("speedup_int8"),
                   int8_accuracy=sum(int8) / len(int8) if int8 else None, minutes=sum(mins) / len(mins) if mins else None,
                   key=key, other_load=max(loads) if loads else None, seeds=len(points))


def points_from_runs(runs: Iterable[dict[str, Any]]) -> list[FrontierPoint]:
    """The finished runs of a criteria/frontier results dict that have a test accuracy and a timed FP32 speedup —
    runs of one recipe that differ only in seed as one point (:func:`_mean_of_seeds`), so that more seeds are a
    better estimate, never more draws at the Pareto front."""
    groups: dict[str, list[tuple[int, FrontierPoint]]] = {}
    for r in runs:
        if r.get("status") != "ok" or r.get("accuracy") is None or not r.get("speedup"):
            continue
        secs = r.get("wall_seconds")
        point = FrontierPoint(method_of(r), float(r.get("target") or 0.0), float(r.get("flops_ratio") or 1.0),
                              float(r["accuracy"]), float(r.get("accuracy_se") or 0.0), _pairs(r.get("speedup")),
                              _pairs(r.get("speedup_int8")), r.get("int8_cpu_accuracy"),
                              secs / 60 if secs else None, r.get("key", ""), r["criterion"],
                              r.get("allocation") or "global", run_other_load(r))
        groups.setdefault(_recipe(r), []).append((int(r.get("seed") or 0), point))
    out = []
    for members in groups.values():
        members.sort(key=lambda m: m[0])
        out.append(members[0][1] if len(members) == 1 else _mean_of_seeds([m[1] for m in members], [m[0] for m in members]))
    return out


def run_other_load(run: dict[str, Any]) -> float | None:
    """The largest ``other_load`` recorded with any of a run's FP32 / INT8 speedups (None when none was recorded)."""
    loads = [m["other_load"] for key in ("speedup", "speedup_int8") for m in obj(run.get(key)).values()
             if isinstance(m, dict) and m.get("other_load") is not None]
    return max(loads) if loads else None


def frontier_paths(value: str | list[str] | None) -> list[str]:
    """``report.frontier`` as a list of paths (one file, a list, or none)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def alignments(result: dict[str, Any]) -> list[int]:
    """The channel blocks the runs of a frontier results file (``result``, as :func:`load_frontier` returns it) were
    pruned in, sorted."""
    return sorted({int(r["alignment"]) for r in result.get("runs") or [] if r.get("alignment")})


def load_frontier(path: str | Path) -> tuple[dict[str, Any], list[FrontierPoint]]:
    """``(result, points)`` of a frontier results file: ``result`` is its criteria/frontier dict (preset, baseline,
    machine under ``"machine"``, the command that made it under ``"command"``), ``points`` its points.
    OSError / ValueError for an unreadable file."""
    data = json.loads(Path(path).read_text())
    result = obj(obj(data.get("results")).get("criteria"))
    if not result:
        raise ValueError(f"{path} holds no frontier results (no results.criteria)")
    result = {**result, "machine": obj(data.get("machine")), "date": data.get("date"), "command": data.get("command")}
    return result, points_from_runs(result.get("runs") or [])


def by_method(points: Iterable[FrontierPoint], batch: str) -> dict[str, list[FrontierPoint]]:
    """Method → its points with a speedup at ``batch``, ordered by that speedup."""
    out: dict[str, list[FrontierPoint]] = {}
    for p in points:
        if batch in p.speedup:
            out.setdefault(p.method, []).append(p)
    return {m: sorted(ps, key=lambda p: p.speedup[batch][0]) for m, ps in out.items()}


def pareto(points: Iterable[FrontierPoint], batch: str) -> list[FrontierPoint]:
    """The Pareto frontier of ``points`` at ``batch``, ordered by speedup there: the points with a speedup at ``batch``
    that no other point dominates. ``q`` dominates ``p`` when it is more accurate and not slower than ``p`` by more
    than their combined speed SE ``√(se_p² + se_q²)`` — two speeds within the timer's noise are one speed, as two
    accuracies within their SE are a tie in :func:`compare_at_speed` (with zero speed SEs: the plain Pareto front).
    Over every run of one criterion (all its allocations and scopes) it is the criterion's frontier: the most accurate
    model it gave at each speed. Every extra run is one more draw: runs of one recipe that differ only in seed come
    in averaged into one point (:func:`points_from_runs`)."""
    ps = [p for p in points if batch in p.speedup]

    def beaten(p: FrontierPoint) -> bool:
        (s, se) = p.speedup[batch]
        return any(q.accuracy > p.accuracy and q.speedup[batch][0] >= s - math.hypot(se, q.speedup[batch][1]) for q in ps)

    return sorted((p for p in ps if not beaten(p)), key=lambda p: (p.speedup[batch][0], p.accuracy))


def by_criterion(points: Iterable[FrontierPoint], batch: str) -> dict[str, list[FrontierPoint]]:
    """Criterion (the Torch-Pruning anchor counts as one) → the :func:`pareto` frontier of all its points at ``batch``."""
    groups: dict[str, list[FrontierPoint]] = {}
    for p in points:
        groups.setdefault(p.criterion or p.method, []).append(p)
    return {c: front for c, ps in groups.items() if (front := pareto(ps, batch))}


def _bracket(points: Sequence[FrontierPoint], speed: float, batch: str,
             slack: float = 0.0) -> tuple[FrontierPoint, FrontierPoint, float] | None:
    """``(a, b, t)``: the two neighbouring points of ``points`` (ordered by speedup at ``batch``) around ``speed`` and
    its fraction ``t`` of the way from ``a`` to ``b``; at or beyond an end by at most ``slack``, the end segment with
    ``t`` 0 or 1 (one point: ``a`` is ``b``); ``None`` outside."""
    xs = [p.speedup[batch][0] for p in points]
    if not xs or speed < xs[0] - slack - 1e-9 or speed > xs[-1] + slack + 1e-9:
        return None
    if len(points) == 1:
        return points[0], points[0], 0.0
    if speed <= xs[0]:
        return points[0], points[1], 0.0
    if speed >= xs[-1]:
        return points[-2], points[-1], 1.0
    i = next(i for i in range(1, len(xs)) if speed <= xs[i] + 1e-9)
    xa, xb = xs[i - 1], xs[i]
    return points[i - 1], points[i], 0.0 if xb - xa < 1e-12 else (speed - xa) / (xb - xa)


def interpolate(points: Sequence[FrontierPoint], speed: float, batch: str, slack: float = 0.0) -> tuple[float, float] | None:
    """The accuracy (and its SE) of the frontier ``points`` (one method, ordered by speedup at ``batch``) at ``speed``:
    linear between the two points around it; an end point's own for a speed beyond that end by at most ``slack``
    (e.g. the speeds' SE); ``None`` outside. SE interpolated the same way."""
    got = _bracket(points, speed, batch, slack)
    if got is None:
        return None
    a, b, t = got
    return a.accuracy + t * (b.accuracy - a.accuracy), a.accuracy_se + t * (b.accuracy_se - a.accuracy_se)


def compare_at_speed(ref: Sequence[FrontierPoint], other: Sequence[FrontierPoint], batch: str) -> list[dict[str, Any]]:
    """For every point of ``ref`` (one frontier) whose speed ``other``'s frontier spans — or lies beyond its nearer end
    by no more than the two speeds' combined SE (read there at that end point) — ``other``'s interpolated accuracy
    there and the verdict: ``above`` (ref more accurate by more than one combined SE), ``tie`` (within it) or
    ``below``. The combined SE ``√(se_r² + se_o² + (slope · σ_s)²)`` holds both accuracies' SEs and the speeds' error
    carried through ``other``'s slope there (pp per ×, of the segment read; ``σ_s`` = √(ref's speed SE² + ``other``'s
    interpolated speed SE²)): where the frontier is steep a speed known to ±0.03× is an accuracy known to ± slope·0.03."""
    rows = []
    for p in ref:
        s, s_se = p.speedup[batch]
        if not other:
            break
        end = other[0] if s < other[0].speedup[batch][0] else other[-1]
        got = _bracket(other, s, batch, slack=math.hypot(s_se, end.speedup[batch][1]))
        if got is None:
            continue
        a, b, t = got
        acc, se = a.accuracy + t * (b.accuracy - a.accuracy), a.accuracy_se + t * (b.accuracy_se - a.accuracy_se)
        (xa, xa_se), (xb, xb_se) = a.speedup[batch], b.speedup[batch]
        slope = (b.accuracy - a.accuracy) / (xb - xa) if xb - xa > 1e-12 else 0.0
        sigma = math.hypot(s_se, xa_se + t * (xb_se - xa_se))
        band = math.sqrt(p.accuracy_se ** 2 + se ** 2 + (slope * sigma) ** 2)
        d = p.accuracy - acc
        rows.append({"key": p.key, "speedup": s, "accuracy": p.accuracy, "other_accuracy": acc, "difference_pp": d,
                     "se_pp": band, "slope_pp_per_x": slope,
                     "verdict": "above" if d > band else ("tie" if d >= -band else "below")})
    return rows


def run_point(report: dict[str, Any], method: str) -> FrontierPoint | None:
    """A pipeline report's pruned model as a frontier point (its validate speedups and pruned PyTorch accuracy), or
    None when the run has not been validated."""
    r = ReportView.from_dict(report)
    pruned, int8 = r.format("pytorch_pruned"), r.format("int8_cpu")
    sp = _pairs(r.speedup)
    if pruned is None or pruned.accuracy is None or not sp:
        return None
    ratio = (r.baseline.get("flops") or 0) / pruned.flops if pruned.flops else 1.0
    return FrontierPoint(method, 1 - 1 / ratio if ratio else 0.0, ratio, float(pruned.accuracy),
                         float(pruned.accuracy_se or 0.0), sp, _pairs(r.speedup_int8),
                         int8.accuracy if int8 is not None else None, None, str(r.run or "this run"))


def plot_frontier(points: Sequence[FrontierPoint], baseline_accuracy: float, path: str | Path, *,
                  batches: Sequence[str] = ("1", "32"), run: FrontierPoint | None = None, title: str = "") -> Path:
    """Test accuracy (± SE) against timed FP32 speedup (± SE), one panel per batch size, a line per method, the
    unpruned model at (1×, its accuracy), the −1 pp band, and ``run`` (a star) when given. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, b in zip(axes[0], batches, strict=True):
        for _method, ps in sorted(by_method(points, b).items()):
            ax.errorbar([p.speedup[b][0] for p in ps], [p.accuracy for p in ps], xerr=[p.speedup[b][1] for p in ps],
                        yerr=[p.accuracy_se for p in ps], marker="o", capsize=3, label=ps[0].label)
        ax.plot([1.0], [baseline_accuracy], marker="s", color="black", linestyle="none", label="unpruned")
        ax.axhline(baseline_accuracy - 1.0, color="grey", linestyle=":", linewidth=1, label="−1 pp")
        if run is not None and b in run.speedup:
            ax.errorbar([run.speedup[b][0]], [run.accuracy], xerr=[run.speedup[b][1]], yerr=[run.accuracy_se], marker="*",
                        markersize=14, color="red", linestyle="none", label=f"{run.key}")
        ax.set_xlabel(f"timed speedup vs unpruned, onnxruntime CPU FP32, batch {b}")
        ax.set_ylabel("test top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out
