"""Criteria side by side at equal MACs and equal budget (issue #13), and pruning for speed (issue #15).

    python -m bench.criteria [--preset cpu|cpu-guard|quick|gpu|speed-r20|speed-r56] [--quick] [--criteria ccpcsa l1 ...]
                             [--targets 0.5] [--seeds 0 1] [--jobs N] [--steps N] [--finetune-epochs N] [--eval-images N]
                             [--baseline CKPT] [--root DIR] [--dry-run]
    python -m bench.criteria --summary bench/results/<date>-<host>.json     # re-render the Markdown summary + plots
    python -m bench --only criteria [--quick]                                # the same through the bench driver

It reuses the pipeline (``python -m pipeline run``), never re-implements it:

1. one shared run (``<root>/_shared-<hash of the settings that shape it>``) up to ``attention``: the baseline
   (``baseline.checkpoint``: the shared trained checkpoint, or one trained here with ``python -m ccpcsa train`` when the
   preset's is absent) and one BAM model;
2. per run of the preset (:mod:`bench.criteria_presets`: criterion or the Torch-Pruning anchor, MACs or speedup
   target, alignment, allocation, seed, distillation, guard) a copy of the shared run and the rest of the chain — up to
   ``prune`` for the accuracy presets, through ``validate`` for the speed presets — ``p.jobs`` runs at a time;
3. each run's metrics come from its ``manifest.json`` (the prune stage's full-test accuracy and MACs, ``validate``'s
   formats and interleaved pruned-vs-unpruned speedups); speed presets also measure the unpruned model in every format
   and profile every run with onnxruntime's profiler (:mod:`bench.criteria_measure`).

Results are merged into ``bench/results/<date>-<host>[-quick].json`` (key ``criteria``) atomically after
every run, so an interrupted preset continues where it stopped: a run whose ``report.json`` exists and
whose manifest has the expected config hash is not run again. The Markdown summary and plots
(``bench/criteria_report.py``) are written at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.common import repo_env
from bench.criteria_measure import measure_speed
from bench.criteria_presets import (  # noqa: F401  (re-exported: the benchmark's vocabulary)
    ALL_CRITERIA,
    ANCHOR,
    BATCHES,
    PRESETS,
    REFERENCE_CRITERION,
    Preset,
    RunSpec,
    common_overrides,
    run_overrides,
)
from ccpcsa.errors import UserError, run_cli
from pipeline.artifacts import BASELINE_CKPT, REPORT_JSON

ROOT = Path(__file__).resolve().parents[1]


def expected_config_hash(p: Preset, overrides: list[str]) -> str:
    """The ``config_hash`` the pipeline will record for these overrides (pure: parses the config in-process)."""
    from pipeline.config import load_config

    return load_config(ROOT / p.config, overrides).section_hash()


# --------------------------------------------------------------------------------------------- running


INTERRUPTED = "interrupted; rerun the same command to resume"


class PipelineError(UserError):
    """A pipeline invocation failed in a way that stops the benchmark (a user error, exit 2); its message keeps its
    line breaks (the first line says what failed, the rest is the tail of the failing run's log)."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_pipeline(p: Preset, run_dir: Path, overrides: list[str], *, until: str | None = None, dry_run: bool = False,
                 env: dict[str, str] | None = None, from_stage: str | None = None) -> int:
    """``python -m pipeline run`` in ``run_dir`` with ``overrides`` (and ``env`` added to the environment; ``--from
    from_stage`` when given); output appended to ``run_dir/pipeline.log``. Returns the exit code (0 ok, 1 a stage
    failed); exit 2 (a user error) raises :class:`PipelineError`."""
    cmd = [sys.executable, "-m", "pipeline", "run", "--config", p.config, "--run-dir", str(run_dir), "--no-progress"]
    if until:
        cmd += ["--until", until]
    if from_stage:
        cmd += ["--from", from_stage]
    for o in overrides:
        cmd += ["--set", o]
    if dry_run:
        print("  $ " + " ".join(cmd if until else cmd[:8] + ["--set <shared overrides>"] + cmd[-8:]), flush=True)
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "pipeline.log"
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(f'{k}={v}' for k, v in (env or {}).items())} {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=repo_env(env)).returncode
    if rc == 2 or rc < 0 or rc > 2:
        raise PipelineError(f"pipeline exited {rc} in {run_dir}; last lines of {log}:\n{_tail(log)}")
    return rc


def ensure_baseline(p: Preset, root: Path, checkpoint: str | None, dry_run: bool = False) -> str:
    """The baseline checkpoint to share: ``checkpoint``/the preset's when it exists, else one trained here
    (``python -m ccpcsa train``, the preset's ``baseline_*`` budget, resumable) into ``<root>/baseline.pt``."""
    ck = checkpoint or p.baseline_checkpoint
    cand = Path(checkpoint).resolve() if checkpoint else (ROOT / ck if ck else None)  # --baseline is relative to the cwd
    if cand is not None and cand.is_file():
        return str(cand.relative_to(ROOT)) if cand.is_relative_to(ROOT) else str(cand)
    out = root / BASELINE_CKPT
    if out.is_file() and not (root / "baseline.training").exists():
        return str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
    print(f"baseline: {ck or '(none)'} not found; training {p.model} for {p.baseline_epochs} epochs"
          f"{f' × {p.baseline_steps} steps' if p.baseline_steps else ''} → {out}", flush=True)
    cmd = [sys.executable, "-m", "ccpcsa", "train", "--model", p.model, "--data", p.data, "--epochs", str(p.baseline_epochs),
           "--lr", str(p.baseline_lr), "--schedule", p.baseline_schedule, "--channels-last", "true", "--device", p.device,
           "--out", str(out), "--resume", "--quiet"]
    if p.baseline_steps:
        cmd += ["--max-steps-per-epoch", str(p.baseline_steps)]
    if dry_run:
        print("  $ " + " ".join(cmd), flush=True)
        return str(out)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "baseline.training"
    marker.touch()
    with open(root / "baseline.log", "a") as fh:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=repo_env(p.train_env)).returncode
    if rc != 0:
        raise PipelineError(f"baseline training exited {rc}; see {root / 'baseline.log'}:\n{_tail(root / 'baseline.log')}")
    marker.unlink()
    return str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)


def _manifest(run_dir: Path) -> dict[str, Any] | None:
    """:func:`pipeline.report.load_manifest`, or None for a run that has none (yet) or a torn one."""
    from pipeline.report import load_manifest

    try:
        return load_manifest(run_dir)
    except (OSError, json.JSONDecodeError):
        return None


def run_is_complete(run_dir: Path, config_hash: str, until: str | None = None) -> bool:
    """True when ``run_dir``'s manifest was made with ``config_hash`` and its last stage ran ok: ``prune`` for an
    accuracy preset (``until="prune"``), else ``validate`` (and ``report.json`` exists)."""
    m = _manifest(run_dir)
    last = until or "validate"
    return bool(m and m.get("config_hash") == config_hash and (until or (run_dir / REPORT_JSON).is_file())
                and (m.get("stages", {}).get(last) or {}).get("status") == "ok")


def _shared_keys(manifest: dict[str, Any] | None) -> list[str | None]:
    return [(((manifest or {}).get("stages") or {}).get(n) or {}).get("key") for n in ("baseline", "attention")]


def prepare_run_dir(shared: Path, run_dir: Path) -> bool:
    """Copy the shared run into ``run_dir`` (atomically, via a temporary folder), unless ``run_dir`` already grew
    from this shared run (its ``baseline`` and ``attention`` stage keys — hashes of their settings and inputs —
    equal the shared run's): then it is kept and the pipeline resumes it, re-running only the stages whose
    settings changed (an interrupted run, or a new export option). Returns True when it was kept."""
    mine = _shared_keys(_manifest(run_dir))
    if run_dir.exists() and all(mine) and mine == _shared_keys(_manifest(shared)):
        return True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    tmp = run_dir.with_name(run_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(shared, tmp, ignore=shutil.ignore_patterns(".lock", "*.log", ".*.tmp"))
    os.replace(tmp, run_dir)
    return False


# --------------------------------------------------------------------------------------------- collecting


def collect_shared(shared: Path) -> dict[str, Any]:
    """Baseline and BAM model metrics recorded by the shared run's stages."""
    m = _manifest(shared) or {}
    st = m.get("stages", {})
    keep = ("accuracy", "accuracy_n", "accuracy_se", "val_accuracy", "params", "flops", "bam_after")
    return {name: {k: v for k, v in ((st.get(name) or {}).get("metrics") or {}).items() if k in keep} | {
        "seconds": (st.get(name) or {}).get("seconds"), "status": (st.get(name) or {}).get("status")} for name in ("baseline", "attention")}


def collect_run(run_dir: Path, spec: RunSpec, base: dict[str, Any], until: str | None = None) -> dict[str, Any]:
    """One result row from ``run_dir``'s manifest (works for failed runs too: whatever stages finished). Accuracy is the
    pruned PyTorch model's top-1 on the preset's test images (``validate``'s when the run went that far, else
    ``prune``'s: the same images), with its image count and standard error."""
    m = _manifest(run_dir) or {}
    st = m.get("stages", {})
    row: dict[str, Any] = {"key": spec.key, **asdict(spec), "run_dir": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir)}
    failed = [(n, s) for n, s in st.items() if s.get("status") == "failed"]
    row["status"] = "failed" if failed else ("ok" if (st.get(until or "validate") or {}).get("status") == "ok" else "incomplete")
    if failed:
        row["failed_stage"], row["reason"] = failed[0][0], failed[0][1].get("reason", "")
    row["stage_seconds"] = {n: s.get("seconds") for n, s in st.items() if n not in ("baseline", "attention")}
    pm = (st.get("prune") or {}).get("metrics") or {}
    if pm:
        base_flops, base_params = base["flops"], base["params"]
        row.update({"flops": pm.get("flops"), "params": pm.get("params"), "accuracy": pm.get("accuracy"),
                    "accuracy_n": pm.get("accuracy_n"), "accuracy_se": pm.get("accuracy_se"),
                    "val_accuracy": pm.get("val_accuracy"), "flops_reduction": 1 - pm["flops"] / base_flops,
                    "params_reduction": 1 - pm["params"] / base_params, "flops_ratio": base_flops / pm["flops"],
                    "accuracy_drop_pp": base["accuracy"] - pm["accuracy"], "alignment": pm.get("alignment"),
                    "stop_reason": pm.get("stop_reason"), "iterations": pm.get("iterations"), "prune_seconds": pm.get("seconds"),
                    "channels_after": pm.get("channels_after"), "latency_target": pm.get("latency") or None,
                    "history": [{k: h.get(k) for k in ("iteration", "flops_reduction", "val_accuracy", "drop_pp", "accepted",
                                                       "channels_removed", "speedup", "seconds")}
                                for h in pm.get("history") or []]})
    vm = (st.get("validate") or {}).get("metrics") or {}
    formats = vm.get("formats") or {}
    if formats:
        keep = ("file", "size_bytes", "accuracy", "accuracy_n", "accuracy_se", "images_per_s", "top1_agreement")
        row["formats"] = {n: {**{k: f.get(k) for k in keep if k in f},
                              "latency_ms": {b: {q: v.get(q) for q in ("p50", "p95")} for b, v in (f.get("latency_ms") or {}).items()}}
                          for n, f in formats.items() if f.get("status") == "ok"}
        pruned, ref = formats.get("pytorch_pruned") or {}, formats.get("pytorch_baseline") or {}
        if pruned.get("accuracy") is not None:
            row.update({k: pruned.get(k) for k in ("accuracy", "accuracy_n", "accuracy_se")})
            row["accuracy_drop_pp"] = ref.get("accuracy", base["accuracy"]) - row["accuracy"]  # same images, same run
        row["int8_cpu_accuracy"] = (formats.get("int8_cpu") or {}).get("accuracy")
        row["int8_accuracy"] = (formats.get("int8") or {}).get("accuracy")
        row["speedup"] = vm.get("speedup") or {}  # interleaved, FP32: {batch: {unpruned_ms, pruned_ms, speedup, ..., efficiency}}
        row["speedup_int8"] = vm.get("speedup_int8") or {}
    return row


def _round(obj: Any, nd: int = 4) -> Any:
    """Floats rounded to ``nd`` significant-ish decimals (keeps the committed JSON small and diffable)."""
    if isinstance(obj, float):
        return float(f"{obj:.{nd}g}") if abs(obj) < 1e4 else round(obj, 1)
    if isinstance(obj, dict):
        return {k: _round(v, nd) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v, nd) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------- driver


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _describe(row: dict[str, Any]) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('failed_stage', '')} {row.get('reason', '')}".strip()
    text = f"acc {row['accuracy']:.2f}% (Δ {-row['accuracy_drop_pp']:+.2f} pp) MACs -{100 * row['flops_reduction']:.1f}%"
    sp = row.get("speedup") or {}
    if sp:
        text += (f" ORT b1 {sp.get('1', {}).get('speedup', 0):.2f}× b32 {sp.get('32', {}).get('speedup', 0):.2f}× "
                 f"(MACs ratio {row['flops_ratio']:.2f}×)")
    return text


def _one_run(p: Preset, shared: Path, run_dir: Path, overrides: list[str]) -> float:
    """Prepare ``run_dir`` from the shared run and run the pipeline in it; the wall time. Training (up to ``prune``) runs
    with the preset's training environment; export → validate (latency) in a fresh process with the defaults."""
    t = time.perf_counter()
    prepare_run_dir(shared, run_dir)
    if run_pipeline(p, run_dir, overrides, until="prune", env=p.train_env) == 0 and p.until is None:
        run_pipeline(p, run_dir, overrides)
    return time.perf_counter() - t


def run_benchmark(p: Preset, *, root: Path | None = None, out_json: Path | None = None, checkpoint: str | None = None,
                  summary: bool = True, dry_run: bool = False, command: str = "") -> dict[str, Any]:
    """Run (or resume) the preset — ``p.jobs`` pipeline runs at a time — merging results into ``out_json`` after every
    run; return the result dict (key ``criteria`` of the JSON)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from bench.common import RESULTS_DIR, merge_results, results_stem

    t_start = time.perf_counter()
    root = root or ROOT / "runs" / "bench-criteria" / p.name
    quick = p.name == "quick"
    out_json = out_json or RESULTS_DIR / f"{results_stem(quick)}{'' if p.name in ('cpu', 'quick') else '-' + p.name}.json"
    command = command or "python -m bench.criteria " + " ".join(sys.argv[1:])
    from ccpcsa.criteria import list_criteria

    unknown = [c for c in {r.criterion for r in p.runs()} if c not in list_criteria() and c != ANCHOR]
    if unknown:
        raise PipelineError(f"unknown criterion {', '.join(unknown)}; known: {', '.join(list_criteria())}")
    specs = p.runs()
    print(f"criteria benchmark, preset {p.name}: {len(specs)} runs under {root}, results → {out_json}", flush=True)
    ckpt = ensure_baseline(p, root, checkpoint, dry_run)
    common = common_overrides(p, ckpt)
    # one shared folder per set of settings that shape the baseline and BAM model; fine-tune, export and check
    # settings reuse it
    import hashlib

    shaping = [o for o in common if o.split(".", 1)[0] in ("run", "model", "data", "train", "baseline", "attention")]
    shared = root / f"_shared-{hashlib.sha256(json.dumps(shaping).encode()).hexdigest()[:10]}"
    if not dry_run:
        for old in root.glob("_shared*"):
            if old != shared and old.is_dir():
                shutil.rmtree(old)
    t = time.perf_counter()
    rc = run_pipeline(p, shared, common, until="attention", dry_run=dry_run, env=p.train_env)
    if rc != 0:
        raise PipelineError(f"shared baseline/attention run failed; see {shared / 'pipeline.log'}:\n{_tail(shared / 'pipeline.log')}")
    print(f"shared baseline + BAM model ready ({time.perf_counter() - t:.0f}s)", flush=True)
    result: dict[str, Any] = {"preset": asdict(p), "root": str(root.relative_to(ROOT) if root.is_relative_to(ROOT) else root),
                              "baseline_checkpoint": ckpt, "overrides": common, "complete": False, "runs": []}
    if dry_run:
        for i, spec in enumerate(specs, 1):
            print(f"[{i}/{len(specs)}] {spec.key}", flush=True)
            run_pipeline(p, root / spec.key, common + run_overrides(p, spec), dry_run=True)
        return result
    result.update(collect_shared(shared))
    hashes = {s.key: expected_config_hash(p, common + run_overrides(p, s)) for s in specs}
    earlier: dict[str, dict[str, Any]] = {}  # rows of an earlier session: keep their wall time and re-timed speeds
    try:
        prev = json.loads(out_json.read_text())["results"]["criteria"]
        earlier = {r["key"]: r for r in prev.get("runs") or [] if prev.get("root") == result["root"]}
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        pass
    rows: dict[str, dict[str, Any]] = {}
    done_times: list[float] = []

    def record(spec: RunSpec, wall: float | None) -> None:
        row = collect_run(root / spec.key, spec, result["baseline"], p.until)
        row["wall_seconds"] = wall if wall is not None else (earlier.get(spec.key) or {}).get("wall_seconds")
        row["load_avg_1min"] = os.getloadavg()[0] if wall is not None and hasattr(os, "getloadavg") else \
            (earlier.get(spec.key) or {}).get("load_avg_1min")
        before = earlier.get(spec.key) or {}
        if wall is None and before.get("revalidated"):  # keep the speeds pooled over quiet re-timing passes
            row.update({k: before[k] for k in ("speedup", "speedup_int8", "retimings", "revalidated") if k in before})
        rows[spec.key] = row
        result["runs"] = [rows[s.key] for s in specs if s.key in rows]
        left = sum(1 for s in specs if s.key not in rows)
        eta = _hms(sum(done_times) / len(done_times) * left / p.jobs) if done_times else "?"
        print(f"[{len(rows)}/{len(specs)}] {spec.key:28s} {'done earlier' if wall is None else f'{wall:.0f}s':>12s}  "
              f"{_describe(row)}  | elapsed {_hms(time.perf_counter() - t_start)}, ETA {eta}", flush=True)
        merge_results(out_json, {"criteria": _round(result)}, quick=quick, command=command)

    todo = []
    for spec in specs:
        if run_is_complete(root / spec.key, hashes[spec.key], p.until):
            record(spec, None)
        else:
            todo.append(spec)
    with ThreadPoolExecutor(max_workers=max(1, p.jobs)) as pool:
        running = {pool.submit(_one_run, p, shared, root / s.key, common + run_overrides(p, s)): s for s in todo}
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                spec = running.pop(fut)
                wall = fut.result()  # a PipelineError (user error) stops the session
                done_times.append(wall)
                record(spec, wall)
    if p.measure_speed:
        measure_speed(p, shared, root, result)
    result["complete"] = all(r.get("status") == "ok" for r in result["runs"]) and not result.get("errors")
    result["wall_seconds"] = time.perf_counter() - t_start
    result["run_seconds_total"] = sum(r["wall_seconds"] for r in result["runs"] if r.get("wall_seconds"))
    merge_results(out_json, {"criteria": _round(result)}, quick=quick, command=command)
    print(f"wrote {out_json}", flush=True)
    if summary:
        from bench.criteria_report import write_summary

        for path in write_summary(json.loads(out_json.read_text()), out_json):
            print(f"wrote {path}", flush=True)
    return result


def preset_from_args(a: argparse.Namespace) -> Preset:
    """The named preset with any command-line overrides applied."""
    p = PRESETS["quick" if a.quick else a.preset]
    changes: dict[str, Any] = {}
    for attr in ("criteria", "targets", "seeds"):
        if getattr(a, attr, None):
            changes[attr] = tuple(getattr(a, attr))
    for attr in ("guard_criteria", "distill_compare"):  # an empty list drops those runs
        if getattr(a, attr, None) is not None:
            changes[attr] = tuple(getattr(a, attr))
    for attr in ("steps_per_epoch", "final_finetune_epochs", "iterations", "eval_images", "latency_iters", "jobs"):
        if getattr(a, attr, None) is not None:
            changes[attr] = getattr(a, attr)
    return replace(p, **changes)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The criteria benchmark's options (shared with ``python -m bench``)."""
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="budget preset (default cpu; --quick = quick)")
    ap.add_argument("--criteria", nargs="+", default=None, help=f"subset of {' '.join(ALL_CRITERIA)}")
    ap.add_argument("--guard-criteria", nargs="*", default=None,
                    help="criteria of the guard runs (Algorithm 1 with the 0.5 pp guard; default: the preset's, cpu-guard = all)")
    ap.add_argument("--distill-compare", nargs="*", default=None,
                    help="criteria also run with distillation flipped (default: the preset's, cpu-guard = ccpcsa l1)")
    ap.add_argument("--targets", nargs="+", type=float, default=None, help="FLOPs reduction targets (fractions)")
    ap.add_argument("--steps", dest="steps_per_epoch", type=int, default=None, help="training steps per (fine-tune) epoch")
    ap.add_argument("--finetune-epochs", dest="final_finetune_epochs", type=int, default=None, help="final fine-tune epochs")
    ap.add_argument("--iterations", type=int, default=None, help="Algorithm 1 pruning steps to reach each target")
    ap.add_argument("--eval-images", type=int, default=None,
                    help="test images for accuracy (a fixed seeded sample; default: the preset's, cpu = all 10000)")
    ap.add_argument("--latency-iters", type=int, default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="pruning seeds of the main grid")
    ap.add_argument("--jobs", type=int, default=None, help="pipeline runs at a time (default: the preset's)")
    ap.add_argument("--baseline", default=None, help="trained unpruned checkpoint (default: the preset's; trained when absent)")
    ap.add_argument("--root", default=None, help="run folder (default runs/bench-criteria/<preset>)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the pipeline commands, run nothing")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.criteria``."""
    ap = argparse.ArgumentParser(prog="python -m bench.criteria", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quick preset (≤ 15 min on 2 cores)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/<date>-<host>[-quick].json)")
    ap.add_argument("--summary", metavar="JSON", default=None, help="only (re)write the Markdown summary + plots of this results file")
    add_arguments(ap)
    a = ap.parse_args(argv)
    if a.summary:
        from bench.criteria_report import write_summary

        for path in write_summary(json.loads(Path(a.summary).read_text()), Path(a.summary)):
            print(f"wrote {path}")
        return 0
    p = preset_from_args(a)

    def body() -> int:
        run_benchmark(p, root=Path(a.root).resolve() if a.root else None, out_json=Path(a.out).resolve() if a.out else None,
                      checkpoint=a.baseline, dry_run=a.dry_run)
        return 0

    return run_cli(body, INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
