"""The product's headline chart: test accuracy against *timed* speedup, per method (issue #21).

    python -m bench.frontier --preset frontier-r20 [--jobs N] [--targets 0.2 0.35 0.5] [--criteria ccpcsa l1] [--dry-run]
    python -m bench.frontier --preset frontier-r20 --revalidate      # re-time every finished run on a quiet machine
    python -m bench.frontier --summary bench/results/<date>-<host>-frontier-r20.json   # re-render table + plot
    python -m bench.frontier place --run-dir runs/default [--frontier FILE ...]   # one run over a frontier, in its report

A frontier preset (:mod:`bench.criteria_presets`) is a criteria-benchmark preset that runs the whole chain: for each
method (``ccpcsa``, ``l1`` and the Torch-Pruning anchor) and MACs target, the pipeline from the shared trained
checkpoint through ``validate`` — the pruned model's top-1 on all 10,000 test images (± SE) and the pruned-vs-unpruned
onnxruntime-CPU speedups (paired timer, FP32 and INT8 U8S8, batch 1 and 32, ± SE) — with :func:`bench.criteria.run_benchmark`
doing the running, resuming and collecting. Training runs ``jobs`` at a time; a timing taken while another run trains
is noisy, so ``--revalidate`` re-runs ``validate`` of every finished run one at a time (on a quiet machine) and
re-collects. The summary (``<results>.md`` + ``.png``) tabulates every point, compares ccpcsa's frontier (the Pareto
front of all its runs, :func:`bench.frontier_points.by_criterion`) with each other criterion's at equal timed speed
(:func:`bench.frontier_points.compare_at_speed`: above / tie within one combined SE / below) and
states the issue's targets. The plot is :func:`bench.frontier_points.plot_frontier`, the same one ``place`` draws in a
run's report (:mod:`bench.frontier_place`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.criteria import INTERRUPTED, PRESETS, collect_run, run_benchmark, run_overrides, run_pipeline
from bench.frontier_points import (
    LABELS,
    FrontierPoint,
    alignments,
    by_criterion,
    compare_at_speed,
    load_frontier,
    plot_frontier,
    pool,
    run_other_load,
)
from ccpcsa.errors import UserError, run_cli
from export.edge.timing import OTHER_LOAD_WARN
from pipeline.records import obj

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "ccpcsa"


@dataclass(frozen=True)
class Target:
    """An issue's target: at least ``speed`` × at batch 1 and 32, in FP32 and, with ``int8``, in INT8 too, within
    ``drop`` pp of the unpruned accuracy."""

    speed: float
    drop: float
    issue: int
    int8: bool = False


#: the issues' targets per model (#21: FP32; #38: FP32 and INT8)
TARGETS = {"resnet20": (Target(1.3, 1.0, 21), Target(1.6, 2.0, 21), Target(1.5, 0.5, 38, int8=True)),
           "resnet56": (Target(1.6, 1.0, 21), Target(2.5, 0.5, 38, int8=True))}


def frontier_presets() -> list[str]:
    """The presets this benchmark runs (names starting with ``frontier``)."""
    return sorted(n for n in PRESETS if n.startswith("frontier"))


def _json_path(preset: str, out: str | None) -> Path:
    from bench.common import RESULTS_DIR, results_stem

    return Path(out).resolve() if out else RESULTS_DIR / f"{results_stem(False)}-{preset}.json"


SPEED_KINDS = ("speedup", "speedup_int8")


def machine_key(machine: dict[str, Any]) -> str:
    """What makes two timings comparable: CPU model, SIMD level, cores and onnxruntime version (of a
    :func:`bench.common.machine_info` dict)."""
    ort = obj(machine.get("libraries")).get("onnxruntime")
    return f"{machine.get('cpu', '?')} | {machine.get('simd', '?')} | {machine.get('cpus', '?')} cores | onnxruntime {ort or '?'}"


def _timing(row: dict[str, Any], machine: str) -> dict[str, Any]:
    """One re-timing pass of a row: the machine, date, and per kind (FP32 / INT8) and batch its speedup, SE and other
    processes' CPU share."""
    return {"machine": machine, "date": obj(row.get("revalidated")).get("date"),
            **{k: {b: {q: m.get(q) for q in ("speedup", "speedup_se", "other_load")} for b, m in obj(row.get(k)).items()}
               for k in SPEED_KINDS}}


def pool_passes(previous: dict[str, Any], new: dict[str, Any], machine: str, previous_machine: str) -> dict[str, Any]:
    """``new`` (a row just re-timed on ``machine``, a :func:`machine_key`) with the speedups of its quiet re-timing
    passes on that machine pooled. ``previous`` is the row it replaces: its passes (``retimings``, or its own speeds,
    timed on ``previous_machine``, when they came from an earlier ``--revalidate``) are kept with the new one in
    ``new["retimings"]``. Per kind and batch, over the passes on ``machine`` whose other processes stayed under
    :data:`OTHER_LOAD_WARN` (all of its passes when none did): speedup ± SE :func:`bench.frontier_points.pool`-ed over the
    n passes (mean; the larger of the within-pass and between-pass SE — the paired timer's SE sees the noise inside one
    pass, not the drift between passes, ≈ 0.03× at batch 1 on the 2-core VM, 2026-12-05); ``passes`` = n. The row's
    latencies and efficiency stay the new pass's."""
    passes = list(previous.get("retimings") or ([_timing(previous, previous_machine)] if previous.get("revalidated") else []))
    passes.append(_timing(new, machine))
    new["retimings"] = passes
    for kind in SPEED_KINDS:
        for b, m in obj(new.get(kind)).items():
            got = [ps[kind][b] for ps in passes
                   if ps.get("machine") == machine and obj(ps.get(kind)).get(b, {}).get("speedup") is not None]
            quiet = [g for g in got if (g.get("other_load") or 0.0) <= OTHER_LOAD_WARN] or got
            mean, se = pool([g["speedup"] for g in quiet], [g.get("speedup_se") or 0.0 for g in quiet])
            loads = [g["other_load"] for g in quiet if g.get("other_load") is not None]
            m.update({"speedup": mean, "speedup_se": se, "passes": len(quiet),
                      "other_load": max(loads) if loads else m.get("other_load")})
    return new


def revalidate(preset: str, out_json: Path, root: Path | None = None) -> int:
    """Re-run ``validate`` (and ``report``) of every finished run of ``out_json`` one at a time, re-collect its row
    (its speedups pooled over this and earlier quiet re-timing passes, :func:`pool_passes`) and rewrite the file.
    Returns the number of runs re-timed."""
    from bench.common import machine_info, merge_results

    p = PRESETS[preset]
    data = json.loads(out_json.read_text())
    result = data["results"]["criteria"]
    here, before = machine_key(machine_info()), machine_key(obj(data.get("machine")))
    common = result["overrides"]
    specs = {s.key: s for s in p.runs()}
    n = 0
    for i, row in enumerate(result["runs"]):
        spec = specs.get(row["key"])
        if spec is None or row.get("status") != "ok":
            continue
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0  # recorded; counts the previous re-timing too
        run_dir = (ROOT / row["run_dir"]) if not Path(row["run_dir"]).is_absolute() else Path(row["run_dir"])
        t = time.perf_counter()
        run_pipeline(p, run_dir, common + run_overrides(p, spec), from_stage="validate")
        new = collect_run(run_dir, spec, result["baseline"], p.until)
        new["wall_seconds"], new["load_avg_1min"] = row.get("wall_seconds"), row.get("load_avg_1min")
        new["revalidated"] = {"seconds": time.perf_counter() - t, "load_avg_1min": load, "date": time.strftime("%Y-%m-%d")}
        sp = obj(new.get("speedup"))
        said = ", ".join(f"b{b} {m['speedup']:.2f}×" for b, m in sp.items())
        busy = run_other_load(new)
        new = pool_passes(row, new, here, before)
        result["runs"][i] = new
        n += 1
        passes = max((m.get("passes", 1) for m in sp.values()), default=1)
        pooled = "" if passes < 2 else " (mean of {} quiet passes: {})".format(
            passes, ", ".join(f"b{b} {m['speedup']:.2f} ± {m['speedup_se']:.2f}×" for b, m in sp.items()))
        print(f"re-timed {row['key']}: {said}{pooled}", flush=True)
        if busy is not None and busy > OTHER_LOAD_WARN:
            print(f"warning: other processes used {100 * busy:.0f} % of the CPU while {row['key']} was re-timed: the machine "
                  "is not quiet; re-run --revalidate when it is", flush=True)
    merge_results(out_json, {"criteria": result}, quick=False, command=data.get("command", ""))
    return n


def _f(v: float | None, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def _noisy(p: FrontierPoint) -> bool:
    """Whether other processes took more than :data:`OTHER_LOAD_WARN` of the CPU while the point's speeds were timed."""
    return p.other_load is not None and p.other_load > OTHER_LOAD_WARN


def _sp(p: FrontierPoint, kind: str, b: str) -> str:
    m = (p.speedup if kind == "fp32" else p.speedup_int8).get(b)
    return "—" if m is None else f"{m[0]:.2f} ± {m[1]:.2f}"


def _slowest(p: FrontierPoint, int8: bool) -> float:
    """The point's smallest speedup over batch 1 and 32, FP32 and (``int8``) INT8; 0 where one is missing."""
    kinds = (p.speedup, p.speedup_int8) if int8 else (p.speedup,)
    return min(k.get(b, (0.0, 0.0))[0] for k in kinds for b in ("1", "32"))


def target_lines(points: list[FrontierPoint], base: float, model: str) -> list[str]:
    """One line per target of :data:`TARGETS`: the most accurate point at least that fast at b1 *and* b32 (in INT8 too
    where the target says so), and whether its drop is within the bound; by how much it is missed otherwise."""
    out = []
    for t in TARGETS.get(model, ()):
        name = f"- #{t.issue}: ≥ {t.speed}× (b1 and b32{', FP32 and INT8' if t.int8 else ''}) within {t.drop} pp"
        fast = [p for p in points if _slowest(p, t.int8) >= t.speed]
        if not fast:
            best = max(points, key=lambda p: _slowest(p, t.int8), default=None)
            got = "no point" if best is None else f"fastest point {best.key}: {_slowest(best, t.int8):.2f}× at its slowest"
            out.append(f"{name}: **missed** — {got}")
            continue
        best = max(fast, key=lambda p: p.accuracy)
        d = base - best.accuracy
        verdict = "met" if d <= t.drop else f"missed by {d - t.drop:.2f} pp"
        out.append(f"{name}: **{verdict}** — {best.key} ({best.label}), "
                   f"{best.accuracy:.2f} ± {best.accuracy_se:.2f} % (−{d:.2f} pp) at {best.speedup['1'][0]:.2f}× / "
                   f"{best.speedup['32'][0]:.2f}×")
    return out


def summary_lines(result: dict[str, Any], points: list[FrontierPoint], json_path: Path, png: Path) -> list[str]:
    """The Markdown summary: table of points, ccpcsa vs each other method at equal timed speed, targets."""
    preset, base = obj(result.get("preset")), obj(result.get("baseline")).get("accuracy")
    model = preset.get("model", "?")
    mach = obj(result.get("machine"))
    command = result.get("command") or f"python -m bench.frontier --preset {preset.get('name')}"
    aligns = alignments(result)
    lines = [f"# Frontier `{preset.get('name')}`: {model}, test accuracy vs timed speedup", "",
             f"`{command}`"
             f" — raw: [`{json_path.name}`]({json_path.name}); machine: {mach.get('cpu', '?')}"
             f"{' (' + mach['simd'] + ')' if mach.get('simd') else ''}, {mach.get('cpus', '?')} cores, {result.get('date', '?')}; "
             f"widths in blocks of {'/'.join(map(str, aligns)) or '?'}; baseline {_f(base)} % "
             f"(all {(obj(result.get('baseline')).get('accuracy_n') or 0):,} test images).", "",
             f"![frontier]({png.name})", "",
             "| method | MACs removed (target) | MACs ratio | test % ± SE | Δ pp | FP32 b1 | FP32 b32 | INT8 b1 | INT8 b32 | INT8 test % | run min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p.method != REFERENCE, p.method, p.target)):
        removed = f"−{100 * (1 - 1 / p.macs_ratio):.1f} % (−{100 * p.target:.0f} %)"
        lines.append(f"| {p.label}{f' (mean of {p.seeds} seeds)' if p.seeds > 1 else ''}{' †' if _noisy(p) else ''} | {removed} | {p.macs_ratio:.2f}× | {p.accuracy:.2f} ± {p.accuracy_se:.2f} | "
                     f"{_f(None if base is None else p.accuracy - base, '+.2f')} | {_sp(p, 'fp32', '1')} | {_sp(p, 'fp32', '32')} | "
                     f"{_sp(p, 'int8', '1')} | {_sp(p, 'int8', '32')} | {_f(p.int8_accuracy)} | {_f(p.minutes, '.1f')} |")
    passes = [m.get("passes") or 1 for r in result.get("runs") or [] if r.get("revalidated")
              for k in SPEED_KINDS for m in obj(r.get(k)).values()]
    if passes:
        span = str(max(passes)) if min(passes) == max(passes) else f"{min(passes)}–{max(passes)}"
        lines += ["", f"Re-timed runs (`--revalidate`, one at a time): speedups the mean of {span} quiet passes on this "
                  "machine, ± the larger of the paired timer's SE and the between-pass SE."
                  if max(passes) > 1 else "Re-timed runs (`--revalidate`, one at a time): one pass, ± the paired timer's SE."]
    lines += ["", "## ccpcsa against the others at equal timed speed", "",
              "A criterion's frontier is the Pareto front of all its runs (every allocation and scope): the points no "
              "more accurate run of it matches in FP32 speedup (within the two speeds' SE) or beats. Each point of "
              "ccpcsa's frontier against the other criterion's frontier read at the same FP32 speedup (linear between its "
              "two neighbouring points; beyond an end by less than the speeds' SE, that end point; further out, not "
              "compared); a tie is within one combined SE: both accuracies' SEs and the speeds' SE times the other "
              "frontier's slope there.", ""]
    for b in ("1", "32"):
        fronts = by_criterion(points, b)
        ref = fronts.get(REFERENCE, [])
        off = sorted(p.key for p in points if p.criterion == REFERENCE and b in p.speedup and p not in ref)
        if off:
            lines.append(f"- batch {b}: off ccpcsa's frontier (a more accurate ccpcsa run is as fast within the speeds' SE, "
                         f"or faster): {', '.join(off)}")
        for other in sorted(c for c in fronts if c != REFERENCE):
            rows = compare_at_speed(ref, fronts[other], b)
            other = LABELS.get(other, other)
            if not rows:
                lines.append(f"- batch {b}, vs {other}: no ccpcsa point inside its speed range")
                continue
            verdicts = ", ".join(f"{r['speedup']:.2f}×: {r['difference_pp']:+.2f} ± {r['se_pp']:.2f} pp ({r['verdict']})" for r in rows)
            ok = all(r["verdict"] != "below" for r in rows)
            lines.append(f"- batch {b}, vs {other}: **{'on or above' if ok else 'below somewhere'}** — {verdicts}")
    busy = [p for p in points if _noisy(p)]
    if busy:
        lines += ["", f"† timed while other processes used up to {100 * max(p.other_load or 0 for p in busy):.0f} % of the "
                  "machine's CPU: these speedups are noisy (re-time with `--revalidate` on a quiet machine)."]
    if base is not None:
        lines += ["", "## Targets", ""] + target_lines(points, float(base), model)
    return lines


def write_summary(json_path: Path) -> list[Path]:
    """``<json>.md`` and ``<json>.png`` from a frontier results file."""
    from ccpcsa.io.artifacts import atomic_write_text

    result, points = load_frontier(json_path)
    base = float(obj(result.get("baseline")).get("accuracy") or 0.0)
    png = plot_frontier(points, base, json_path.with_suffix(".png"),
                        title=f"{obj(result.get('preset')).get('model')}: accuracy vs timed speedup (onnxruntime CPU)")
    md = atomic_write_text(json_path.with_suffix(".md"), "\n".join(summary_lines(result, points, json_path, png)) + "\n")
    md.chmod(0o644)
    png.chmod(0o644)
    return [md, png]


def place_main(argv: list[str]) -> int:
    """``python -m bench.frontier place``: the run of ``--run-dir`` (or of ``--config``, ``runs/<run.name>``) placed over
    the ``--frontier`` files, else its own config's ``report.frontier`` (:func:`bench.frontier_place.place_run`);
    prints the files written, or one line when no frontier file is named. Returns the exit code (a UserError: one
    ``error:`` line and its code, 2)."""
    from bench.frontier_place import place_run, run_dir_of
    from ccpcsa.errors import CliParser

    ap = CliParser(prog="python -m bench.frontier place",
                                 description="Place one pipeline run over the accuracy-vs-speedup frontier of its model: "
                                             "frontier.md and plots/frontier.png in its run directory, then its report "
                                             "re-rendered with that section.")
    ap.add_argument("--run-dir", default=None, help="the run (default: runs/<run.name> of --config)")
    ap.add_argument("--config", default=None, help="the run's config, to find its run directory without --run-dir")
    ap.add_argument("--frontier", nargs="+", default=None, metavar="FILE",
                    help="frontier results files (default: the run's config's report.frontier)")
    a = ap.parse_args(argv)

    def body() -> int:
        run_dir = run_dir_of(a.run_dir, a.config)
        written = place_run(run_dir, a.frontier)
        if not written:
            print(f"no frontier to place {run_dir} on: its config sets no report.frontier and no --frontier was given")
        for w in written:
            print(f"wrote {w}")
        return 0

    return run_cli(body, INTERRUPTED)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.frontier`` (``place`` as the first argument: :func:`place_main`)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["place"]:
        return place_main(args[1:])
    ap = argparse.ArgumentParser(prog="python -m bench.frontier", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    names = frontier_presets()
    ap.add_argument("--preset", choices=names, default=names[0] if names else None)
    ap.add_argument("--criteria", nargs="+", default=None, help="methods (criteria) of the sweep besides the anchor")
    ap.add_argument("--targets", nargs="+", type=float, default=None, help="MACs reduction targets (fractions)")
    ap.add_argument("--jobs", type=int, default=None, help="pipeline runs at a time (default: the preset's)")
    ap.add_argument("--no-anchor", action="store_true", help="leave out the Torch-Pruning anchor")
    ap.add_argument("--root", default=None, help="run folder (default runs/bench-criteria/<preset>)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/<date>-<host>-<preset>.json)")
    ap.add_argument("--revalidate", action="store_true", help="re-time every finished run, one at a time, then summarize")
    ap.add_argument("--summary", metavar="JSON", default=None, help="only (re)write the summary and plot of this file")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the pipeline commands, run nothing")
    a = ap.parse_args(args)

    def summarize(path: Path) -> None:
        try:
            written = write_summary(path)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot summarize {path} ({type(exc).__name__}: {exc}); pass a results JSON that "
                            "python -m bench.frontier wrote") from exc
        for w in written:
            print(f"wrote {w}")

    def body() -> int:
        if a.summary:
            summarize(Path(a.summary).resolve())
            return 0
        out = _json_path(a.preset, a.out)
        if a.revalidate:
            if not out.is_file():
                raise UserError(f"{out} does not exist; run the preset first (or pass --out)")
            revalidate(a.preset, out)
        else:
            p = PRESETS[a.preset]
            changes: dict[str, Any] = {}
            if a.criteria:
                changes["criteria"] = tuple(a.criteria)
            if a.targets:
                changes["targets"] = tuple(a.targets)
            if a.jobs:
                changes["jobs"] = a.jobs
            if a.no_anchor:
                changes["anchor"] = False
            run_benchmark(replace(p, **changes), root=Path(a.root).resolve() if a.root else None, out_json=out,
                          summary=False, dry_run=a.dry_run, command="python -m bench.frontier " + " ".join(sys.argv[1:]))
        if not a.dry_run:
            summarize(out)
        return 0

    return run_cli(body, INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
