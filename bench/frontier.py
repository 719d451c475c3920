"""The product's headline chart: test accuracy against *measured* speedup, per method (issue #21).

    python -m bench.frontier --preset frontier-r20 [--jobs N] [--targets 0.2 0.35 0.5] [--criteria ccpcsa l1] [--dry-run]
    python -m bench.frontier --preset frontier-r20 --revalidate      # re-time every finished run on a quiet machine
    python -m bench.frontier --summary bench/results/<date>-<host>-frontier-r20.json   # re-render table + plot

A frontier preset (:mod:`bench.criteria_presets`) is a criteria-benchmark preset that runs the whole chain: for each
method (``ccpcsa``, ``l1`` and the Torch-Pruning anchor) and MACs target, the pipeline from the shared trained
checkpoint through ``validate`` — the pruned model's top-1 on all 10,000 test images (± SE) and the pruned-vs-unpruned
onnxruntime-CPU speedups (paired timer, FP32 and INT8 U8S8, batch 1 and 32, ± SE) — with :func:`bench.criteria.run_benchmark`
doing the running, resuming and collecting. Training runs ``jobs`` at a time; a timing taken while another run trains
is noisy, so ``--revalidate`` re-runs ``validate`` of every finished run one at a time (on a quiet machine) and
re-collects. The summary (``<results>.md`` + ``.png``) tabulates every point, compares ccpcsa with each other method at
equal measured speed (:func:`pipeline.frontier.compare_at_speed`: above / tie within one combined SE / below) and
states the issue's targets. The plot is :func:`pipeline.frontier.plot_frontier`, the same one a run's report draws.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.criteria import INTERRUPTED, PRESETS, collect_run, run_benchmark, run_overrides, run_pipeline
from ccpcsa.errors import UserError, run_cli
from pipeline.frontier import (
    FrontierPoint,
    alignments,
    by_method,
    compare_at_speed,
    load_frontier,
    plot_frontier,
)
from pipeline.stages_export import OTHER_LOAD_WARN

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "ccpcsa"
#: the issue's targets: (model, speedup at b1 and b32, max accuracy drop pp)
TARGETS = {"resnet20": ((1.3, 1.0), (1.6, 2.0)), "resnet56": ((1.6, 1.0),)}
BUSY_LOAD = 0.5  # 1-minute load average above which --revalidate warns that the timing is not quiet


def frontier_presets() -> list[str]:
    """The presets this benchmark runs (names starting with ``frontier``)."""
    return sorted(n for n in PRESETS if n.startswith("frontier"))


def _json_path(preset: str, out: str | None) -> Path:
    from bench.common import RESULTS_DIR, results_stem

    return Path(out).resolve() if out else RESULTS_DIR / f"{results_stem(False)}-{preset}.json"


def revalidate(preset: str, out_json: Path, root: Path | None = None) -> int:
    """Re-run ``validate`` (and ``report``) of every finished run of ``out_json`` one at a time, re-collect its row and
    rewrite the file. Returns the number of runs re-timed."""
    from bench.common import merge_results

    p = PRESETS[preset]
    data = json.loads(out_json.read_text())
    result = data["results"]["criteria"]
    common = result["overrides"]
    specs = {s.key: s for s in p.runs()}
    n = 0
    for i, row in enumerate(result["runs"]):
        spec = specs.get(row["key"])
        if spec is None or row.get("status") != "ok":
            continue
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if load > BUSY_LOAD:
            print(f"warning: load average {load:.2f} while re-timing {row['key']}: the machine is not quiet", flush=True)
        run_dir = (ROOT / row["run_dir"]) if not Path(row["run_dir"]).is_absolute() else Path(row["run_dir"])
        t = time.perf_counter()
        run_pipeline(p, run_dir, common + run_overrides(p, spec), from_stage="validate")
        new = collect_run(run_dir, spec, result["baseline"], p.until)
        new["wall_seconds"], new["load_avg_1min"] = row.get("wall_seconds"), row.get("load_avg_1min")
        new["revalidated"] = {"seconds": time.perf_counter() - t, "load_avg_1min": load, "date": time.strftime("%Y-%m-%d")}
        result["runs"][i] = new
        n += 1
        sp = new.get("speedup") or {}
        print(f"re-timed {row['key']}: " + ", ".join(f"b{b} {m['speedup']:.2f}×" for b, m in sp.items()), flush=True)
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


def target_lines(points: list[FrontierPoint], base: float, model: str) -> list[str]:
    """One line per target of :data:`TARGETS`: the most accurate point at least that fast at b1 *and* b32, and whether
    its drop is within the bound; by how much it is missed otherwise."""
    out = []
    for speed, drop in TARGETS.get(model, ()):
        fast = [p for p in points if all(p.speedup.get(b, (0.0, 0.0))[0] >= speed for b in ("1", "32"))]
        if not fast:
            best = max(points, key=lambda p: min(p.speedup.get(b, (0.0, 0.0))[0] for b in ("1", "32")), default=None)
            got = "no point" if best is None else (f"fastest point {best.key}: "
                                                   f"{min(best.speedup[b][0] for b in ('1', '32')):.2f}× at its slower batch")
            out.append(f"- ≥ {speed}× (b1 and b32) within {drop} pp: **missed** — {got}")
            continue
        best = max(fast, key=lambda p: p.accuracy)
        d = base - best.accuracy
        verdict = "met" if d <= drop else f"missed by {d - drop:.2f} pp"
        out.append(f"- ≥ {speed}× (b1 and b32) within {drop} pp: **{verdict}** — {best.key} ({best.label}), "
                   f"{best.accuracy:.2f} ± {best.accuracy_se:.2f} % (−{d:.2f} pp) at {best.speedup['1'][0]:.2f}× / "
                   f"{best.speedup['32'][0]:.2f}×")
    return out


def summary_lines(result: dict[str, Any], points: list[FrontierPoint], json_path: Path, png: Path) -> list[str]:
    """The Markdown summary: table of points, ccpcsa vs each other method at equal measured speed, targets."""
    preset, base = result.get("preset") or {}, (result.get("baseline") or {}).get("accuracy")
    model = preset.get("model", "?")
    mach = result.get("machine") or {}
    command = result.get("command") or f"python -m bench.frontier --preset {preset.get('name')}"
    aligns = alignments(result)
    lines = [f"# Frontier `{preset.get('name')}`: {model}, test accuracy vs measured speedup", "",
             f"`{command}`"
             f" — raw: [`{json_path.name}`]({json_path.name}); machine: {mach.get('cpu', '?')}"
             f"{' (' + mach['simd'] + ')' if mach.get('simd') else ''}, {mach.get('cpus', '?')} cores, {result.get('date', '?')}; "
             f"widths in blocks of {'/'.join(map(str, aligns)) or '?'}; baseline {_f(base)} % "
             f"(all {((result.get('baseline') or {}).get('accuracy_n') or 0):,} test images).", "",
             f"![frontier]({png.name})", "",
             "| method | MACs removed (target) | MACs ratio | test % ± SE | Δ pp | FP32 b1 | FP32 b32 | INT8 b1 | INT8 b32 | INT8 test % | run min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p.method != REFERENCE, p.method, p.target)):
        removed = f"−{100 * (1 - 1 / p.macs_ratio):.1f} % (−{100 * p.target:.0f} %)"
        lines.append(f"| {p.label}{' †' if _noisy(p) else ''} | {removed} | {p.macs_ratio:.2f}× | {p.accuracy:.2f} ± {p.accuracy_se:.2f} | "
                     f"{_f(None if base is None else p.accuracy - base, '+.2f')} | {_sp(p, 'fp32', '1')} | {_sp(p, 'fp32', '32')} | "
                     f"{_sp(p, 'int8', '1')} | {_sp(p, 'int8', '32')} | {_f(p.int8_accuracy)} | {_f(p.minutes, '.1f')} |")
    lines += ["", "## ccpcsa against the others at equal measured speed", "",
              "Each ccpcsa point against the other method's frontier read at the same FP32 speedup (linear between its two "
              "neighbouring points; points outside its range are not compared); a tie is within one combined SE.", ""]
    for b in ("1", "32"):
        curves = by_method(points, b)
        own = {p.method for p in points if p.criterion == REFERENCE}  # ccpcsa and its other allocations: not compared
        for other in sorted(m for m in curves if m not in own):
            rows = compare_at_speed(curves.get(REFERENCE, []), curves[other], b)
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
        lines += ["", "## Targets (issue #21)", ""] + target_lines(points, float(base), model)
    return lines


def write_summary(json_path: Path) -> list[Path]:
    """``<json>.md`` and ``<json>.png`` from a frontier results file."""
    from ccpcsa.io.artifacts import atomic_write_text

    result, points = load_frontier(json_path)
    base = float((result.get("baseline") or {}).get("accuracy") or 0.0)
    png = plot_frontier(points, base, json_path.with_suffix(".png"),
                        title=f"{(result.get('preset') or {}).get('model')}: accuracy vs measured speedup (onnxruntime CPU)")
    md = atomic_write_text(json_path.with_suffix(".md"), "\n".join(summary_lines(result, points, json_path, png)) + "\n")
    md.chmod(0o644)
    png.chmod(0o644)
    return [md, png]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.frontier``."""
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
    a = ap.parse_args(argv)

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
