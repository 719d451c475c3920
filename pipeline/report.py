"""``report.json`` + ``report.md`` + plots, built only from the manifest and the run's JSON artifacts.

report.json schema (see README): ``{"run", "config", "config_hash", "baseline": {"accuracy", "accuracy_n",
"accuracy_se", "params", "flops", "weights"}, "evaluation": {"final_images", "gate_images"}, "stages": [{"name",
"status", "reason", "artifact", "sha256", "metrics": {"accuracy", "accuracy_n", "accuracy_se", "params", "flops",
"size_bytes", "latency_ms": {"<batch>": {"p50", "p95"}}, "max_abs_diff", "top1_agreement"}, "checks": [{"name",
"passed", "value", "threshold"}]}], "formats": [...]}`` — accuracy is top-1 in percent on ``accuracy_n`` test
images with standard error ``accuracy_se`` (pp, :mod:`pipeline.accuracy`); FLOPs as MACs per image. The headline
accuracies (``baseline``, ``formats``, and the stage rows once ``validate`` ran) are ``validate``'s, on the whole
test split by default; the gates' own values (on the ``checks.eval_images`` sample) stay in each stage's checks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ccpcsa.io.artifacts import atomic_path, atomic_write_json, atomic_write_text

from .accuracy import format_accuracy
from .artifacts import FRONTIER_PLOT, FRONTIER_SECTION
from .records import ReportView, RunManifest, StageRecord, ValidateRecord, obj, speedups_by_runtime

__all__ = ["FRONTIER_PLOT", "FRONTIER_SECTION", "build_report", "format_table", "load_manifest", "optional_section",
           "section_stamp", "speedup_section", "speedups_by_runtime", "write_report"]

#: the optional Frontier section a benchmark places in a run directory (``python -m bench.frontier place``) and its plot

# stage → the format row (in validate's metrics) that describes its artifact
STAGE_FORMAT = {"baseline": "pytorch_baseline", "prune": "pytorch_pruned", "onnx": "onnx", "simplify": "onnx_simplified",
                "int8": "int8", "int8_cpu": "int8_cpu"}
FORMAT_TITLES = {"pytorch_baseline": "PyTorch baseline", "pytorch_pruned": "PyTorch pruned", "onnx": "ONNX",
                 "onnx_simplified": "ONNX simplified", "int8": "INT8 QDQ for TensorRT (S8S8)",
                 "int8_cpu": "INT8 QDQ for CPU (U8S8)", "tensorrt_fp32": "TensorRT FP32",
                 "tensorrt_fp16": "TensorRT FP16", "tensorrt_int8": "TensorRT INT8"}
SCHEMA_KEYS = ("accuracy", "accuracy_n", "accuracy_se", "params", "flops", "size_bytes", "latency_ms", "max_abs_diff",
               "top1_agreement")
ACCURACY_KEYS = ("accuracy", "accuracy_n", "accuracy_se")  # taken together, from one evaluation


def build_report(manifest: RunManifest | dict[str, Any]) -> dict[str, Any]:
    """The report dict of a manifest (a pure function of its contents; a dict is read with
    :meth:`RunManifest.from_dict`, so a damaged one is a UserError): the run, its config, the baseline as validate
    evaluated it, one row per finished stage (a record of an interrupted stage is no result), validate's format rows,
    speedups and runtimes, the target and how the widths were chosen."""
    m = RunManifest.from_dict(manifest)
    val = m.validate
    base, prune = m.metrics("baseline"), m.metrics("prune")
    stages = [stage_row(rec, val) for name, rec in m.stages.items() if name != "report" and rec.finished]
    # Headline: the baseline as validate evaluated it, on the same (full test) images as every format row.
    base_fmt = val.format("pytorch_baseline")
    base_acc = base_fmt if base_fmt.get("accuracy") is not None else base
    return {"run": m.run, "config": m.config, "config_hash": m.config_hash,
            "baseline": {**{k: base_acc.get(k) for k in ACCURACY_KEYS}, "params": base.get("params"), "flops": base.get("flops"),
                         "weights": base.get("weights")},
            "evaluation": val.evaluation or {"final_images": None, "test_images": None, "gate_images": base.get("accuracy_n")},
            "stages": stages, "formats": [{"name": k, **v} for k, v in val.formats.items()],
            "speedup": val.speedup, "speedup_int8": val.speedup_int8, "speedup_reference": val.speedup_reference,
            "speedups": speedups_by_runtime({"speedups": val.speedups, "speedup": val.speedup,
                                             "speedup_int8": val.speedup_int8}),
            "runtimes": val.runtimes,
            "target": prune.get("target"),
            "pruning": {k: prune.get(k) for k in ("alignment", "alignment_reason", "allocation", "left_whole", "latency",
                                                  "dropped_blocks", "depth_choice", "train_precision",
                                                  "teacher_views", "feature_distill")}}


def stage_row(rec: StageRecord, val: ValidateRecord) -> dict[str, Any]:
    """One ``stages`` row of report.json: the stage's status, artifact and checks; its metrics the final (validate)
    evaluation of its format when there is one, else the stage's own — never a mix of the two for the accuracy."""
    fmt = val.format(STAGE_FORMAT.get(rec.name, ""))
    metrics = {k: fmt.get(k, rec.metrics.get(k)) for k in SCHEMA_KEYS}
    acc = fmt if fmt.get("accuracy") is not None else rec.metrics
    metrics.update({k: acc.get(k) for k in ACCURACY_KEYS})
    if rec.name == "engine":
        metrics["engines"] = {k: v for k, v in val.formats.items() if k.startswith("tensorrt")}
    artifact = rec.artifact
    return {"name": rec.name, "status": rec.status, "reason": rec.reason, "artifact": artifact,
            "sha256": rec.outputs.get(artifact) if artifact else None, "metrics": metrics,
            "checks": [c.to_dict() for c in rec.checks], "seconds": rec.seconds}


def _se(s: dict[str, Any]) -> str:
    return f" ± {s['speedup_se']:.2f}" if s.get("speedup_se") is not None else ""


def runtime_label(runtime: str, ident: dict[str, Any] | None) -> str:
    """``openvino-cpu 2026.4.1 on AMD EPYC (avx2, avx512f, avx512_vnni), 2 threads``: what a speed number belongs to."""
    if not ident:
        return runtime
    ver = str(ident.get("version", "")).split("-")[0]
    simd = f" ({', '.join(ident['simd'])})" if ident.get("simd") else ""
    threads = f", {ident['threads']} threads" if ident.get("threads") else ""
    return f"{runtime} {ver} on {ident.get('device') or ident.get('cpu')}{simd}{threads}"


def speedup_section(report: dict[str, Any]) -> list[str]:
    """Markdown: pruned vs unpruned on each runtime of this machine (FP32 and INT8 U8S8, interleaved timing) — speedup,
    MACs ratio and efficiency (speedup / MACs ratio) per batch, each runtime named with its version, CPU and threads —
    and how the widths were chosen (for which target). Empty when the report has no speedup."""
    r = ReportView.from_dict(report)
    rows = [(rt, kind, b, s) for rt, kinds in r.speedups.items()
            for kind, sp in (("FP32", kinds.get("fp32", {})), ("INT8 (U8S8)", kinds.get("int8", {}))) for b, s in sp.items()]
    if not rows:
        return []
    md = ["## Pruned vs unpruned, per runtime (interleaved timing)", "",
          "| runtime | precision | batch | unpruned ms | pruned ms | speedup ± SE | MACs ratio | efficiency (speedup / MACs ratio) |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {rt} | {kind} | {b} | {s['unpruned_ms']:.3f} | {s['pruned_ms']:.3f} | {s['speedup']:.2f}×{_se(s)} | "
           f"{s['flops_ratio']:.2f}× | {s['efficiency']:.2f} |" for rt, kind, b, s in rows]
    md += ["", "Runtimes: " + "; ".join(runtime_label(rt, r.runtimes.get(rt)) for rt in r.speedups) + "."]
    rounds = {s.get("rounds") for *_, s in rows} - {None}
    if rounds:
        md += ["", f"Speedup: median over {'/'.join(map(str, sorted(rounds)))} interleaved rounds of the per-round ratio "
               "unpruned / pruned (onnxruntime's thread spinning off in both sessions), ± its standard error."]
        if r.speedup_reference:
            md[-1] += (" Unpruned reference: the unpruned model through the same export path ("
                       + ", ".join(f"{k.upper()} `{v}`" for k, v in r.speedup_reference.items()) + ").")
    busy = [s["other_load"] for *_, s in rows if s.get("other_load") is not None]
    if busy:
        md[-1] += (f" Other processes used at most {100 * max(busy):.0f} % of the machine's CPU while it was timed"
                   + (" — **these speedups were timed on a busy machine**." if max(busy) > 0.1 else "."))
    return md + pruning_lines(r) + [""]


def pruning_lines(r: ReportView) -> list[str]:
    """Markdown lines under the speedups: the target the widths were chosen for, the channel block and allocation,
    blocks removed or left whole, and the latency target against the speedup reached at the end of pruning."""
    md: list[str] = []
    if r.target:
        md += ["", f"Target the widths and latency steps were chosen for: {r.target.get('label') or r.target.get('name')}"
               + (f" (timed on the device, `{r.target['file']}`)" if r.target.get("file") else " (timed on this machine)")
               + "."]
    p = r.pruning
    if p.get("alignment"):
        md += ["", f"Kept widths are multiples of {p['alignment']} ({p.get('alignment_reason') or ''}); allocation "
               f"`{p.get('allocation')}`."]
        if p.get("dropped_blocks"):
            md.append("Removed whole (`prune.depth.drop_blocks`): " + ", ".join(f"`{b}`" for b in p["dropped_blocks"]) + ".")
        if p.get("depth_choice"):
            md.append(depth_choice_line(p["depth_choice"]))
        if p.get("train_precision"):
            md.append(f"Fine-tunes trained in {p['train_precision']} (`train.amp`).")
        if p.get("teacher_views"):
            v = p["teacher_views"]
            md.append(f"Distilled from cached teacher logits: {v['views']} view(s) of each of {v['images']} training images, "
                      f"built in {v['seconds']:.0f} s (`prune.recovery.distill.views`).")
        if p.get("feature_distill"):
            f = p["feature_distill"]
            md.append(f"Feature distillation at the stage outputs (β = {f['weight']:g}, `prune.recovery.distill.features`): "
                      + ", ".join(f"`{s}`" for s in f["stages"])
                      + ("; left out: " + "; ".join(f"`{k}` ({v})" for k, v in f["left_out"].items()) if f["left_out"] else "")
                      + ".")
        if p.get("left_whole"):
            md.append("Left whole (cannot be pruned consistently): " + "; ".join(f"`{k}` ({v})" for k, v in p["left_whole"].items()) + ".")
        lat = r.latency_step
        if lat.get("target_speedup"):
            md.append(f"Latency target: {lat['target_speedup']:.2f}× at batch {lat.get('batch')} → "
                      f"{_fmt(lat.get('final_speedup'))}× at the end of pruning.")
    return md


def depth_choice_line(choice: dict[str, Any]) -> str:
    """The search behind ``prune.depth.drop_blocks: auto`` in a few sentences: each depth's one-shot val accuracy at
    the target (:mod:`ccpcsa.pruning.depth_choice`), with ``prune.depth.price: time`` each stage's share of the time
    per block and, with ``prune.depth.min_speedup``, the slowest speedup of each timed probe against the floor."""
    def name(d: dict[str, Any]) -> str:
        if not d["blocks"]:
            return "0 (channels only)"
        return f"{len(d['blocks'])}" + (" per stage" if d.get("family") == "per-stage" else "")

    tried = "; ".join(f"{name(d)}: {d['val_accuracy']:.2f} %" + ("" if d["reached"] else ", short of the target")
                      for d in choice.get("depths", []))
    line = (f"Blocks chosen by `prune.depth.drop_blocks: auto` ({choice.get('seconds', 0):.0f} s): "
            f"{', '.join(f'`{b}`' for b in choice.get('blocks', [])) or 'none'} — one-shot val accuracy at the target "
            f"with the k cheapest blocks removed (overall, or of every stage), then channels: {tried}.")
    if choice.get("price") == "time" and choice.get("stage_times"):
        line += (" Blocks priced per percent of the target's time (`prune.depth.price: time`; a stage's blocks timed "
                 "together, slowest of FP32 / INT8 and batch sizes): " + "; ".join(
                     f"{_span(s['blocks'])} {100 * s['time_share']:.1f} % each" for s in choice["stage_times"]) + ".")
    timed = [d for d in choice.get("depths", []) if d.get("speedups")]
    if choice.get("min_speedup") is not None and timed:
        line += (f" Timed against `prune.depth.min_speedup` {choice['min_speedup']}× (slowest of FP32 / INT8 and batch "
                 "sizes): " + "; ".join(f"{name(d)}: {min(d['speedups'].values()):.2f}×"
                                       + ("" if d.get("fast_enough") else ", too slow") for d in timed)
                 + ("." if choice.get("floor_met") else "; none reached the floor, the fastest is kept."))
    return line


def _span(blocks: list[str]) -> str:
    """``a``, ``a, b`` or ``a … z (n blocks)``: a stage's blocks in a few words."""
    if len(blocks) <= 2:
        return ", ".join(f"`{b}`" for b in blocks)
    return f"`{blocks[0]}` … `{blocks[-1]}` ({len(blocks)} blocks)"


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "—"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def format_table(report: dict[str, Any]) -> str:
    """The per-format Markdown table of a report dict (also printed at the end of a run): file, runtime, size, params,
    MACs, accuracy ± SE and its difference to the baseline, p50 / p95 latency and throughput per batch, parity and
    status."""
    r = ReportView.from_dict(report)
    batches = sorted({b for f in r.formats for b in f.latency_ms}, key=int)
    head = ["format", "file", "runtime", "size", "params", "MACs", "accuracy % ± SE", "n", "Δacc pp"]
    for b in batches:
        head += [f"p50 ms b{b}", f"p95 ms b{b}", f"img/s b{b}"]
    head += ["parity", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_acc = r.baseline.get("accuracy")
    for f in r.formats:
        acc = f.accuracy
        title = FORMAT_TITLES.get(f.name.split("@")[0], f.name)
        runtime = f.runtime or ("onnxruntime-cpu" if (f.file or "").endswith(".onnx") else "—")
        if f.gated is False:
            runtime += " (not its runtime: made for " + ", ".join(f.made_for) + "; not gated)"
        row = [title, f.file or "—", runtime,
               _fmt(f.size_bytes / 1024, ".0f") + " KiB" if f.size_bytes else "—",
               _fmt(f.params, ",d") if isinstance(f.params, int) else "—",
               _fmt(f.flops / 1e6, ".1f") + " M" if f.flops else "—",
               format_accuracy(acc, f.accuracy_se), _fmt(f.accuracy_n, ",d") if isinstance(f.accuracy_n, int) else "—",
               _fmt(acc - base_acc, "+.2f") if acc is not None and base_acc is not None else "—"]
        for b in batches:
            s = f.latency(b)
            row += [_fmt(s.get("p50")), _fmt(s.get("p95")), _fmt(f.images_per_s.get(b), ".0f")]
        row += [f.parity or "—", f.status + (f" ({f.reason})" if f.reason else "")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def evaluation_note(report: dict[str, Any]) -> str:
    """One paragraph under the table: which images the accuracies are from and what ± means; the baseline's weights
    when they were not trained here; the intermediate gates' sample when it differs."""
    r = ReportView.from_dict(report)
    final, test, gate = (r.evaluation.get(k) for k in ("final_images", "test_images", "gate_images"))

    def images(n: Any) -> str:
        if not isinstance(n, int):
            return "the test split"
        return f"all {n:,} test images" if n == test else f"a fixed seeded sample of {n:,} of the {test:,} test images"

    text = (f"Accuracy: top-1 on {images(final)} (`checks.final_eval_images`), ± one standard error √(p(1−p)/n) in "
            "percentage points; Δacc against the PyTorch baseline on the same images.")
    w = r.weights
    if w.get("source") and w["source"] != "trained":
        text += f" Baseline weights: `{w.get('path')}` ({w['source']}, SHA-256 `{w.get('sha256')}`), used as given."
    if isinstance(gate, int) and isinstance(test, int):
        text += f" The intermediate gates (prune, ONNX, simplify, INT8, engine) evaluated on {images(gate)} (`checks.eval_images`)."
    return text


def write_report(run_dir: Path, manifest: RunManifest | dict[str, Any]) -> list[Path]:
    """Write report.json, report.md and plots/*.png of the run in ``run_dir`` atomically, from its manifest (a dict
    is read with :meth:`RunManifest.from_dict`: UserError when damaged) and its device results; return the paths
    written. The optional Frontier section is the run directory's :data:`FRONTIER_SECTION` when a benchmark placed
    one there (:func:`optional_section`); nothing is computed for it here."""
    from .device_result import device_report

    m = RunManifest.from_dict(manifest, run_dir / "manifest.json")
    report = build_report(m)
    device, device_md = device_report(run_dir)  # results brought back from the target (report --device-result)
    if device:
        report["device_results"] = device
    paths = [atomic_write_json(run_dir / "report.json", report)]
    plots = write_plots(run_dir, m, report)
    md = [f"# Run `{report['run']}`", "", f"config hash `{report['config_hash']}`", "", "## Formats", "", format_table(report), "",
          evaluation_note(report), ""]
    md += speedup_section(report)
    md += device_md
    md += ["## Stages", "", "| stage | status | reason | seconds | checks |", "|---|---|---|---|---|"]
    for s in report["stages"]:
        checks = "; ".join(f"{c['name']} {'✔' if c['passed'] else '✘'} {_fmt(c['value'], '.4g')} (≤/≥ {c['threshold']})" for c in s["checks"])
        md.append(f"| {s['name']} | {s['status']} | {s['reason'] or ''} | {_fmt(s.get('seconds'), '.1f')} | {checks} |")
    md += optional_section(run_dir, m, plots)
    md += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    paths.append(atomic_write_text(run_dir / "report.md", "\n".join(md) + "\n"))
    section = run_dir / FRONTIER_SECTION
    return paths + ([section] if section.is_file() else []) + plots


def section_stamp(manifest: RunManifest | dict[str, Any]) -> str:
    """The first line of an optional report section (:data:`FRONTIER_SECTION`): an HTML comment naming the prune and
    validate results it was computed from (a digest of their metrics). :func:`optional_section` shows the section
    only while the run's results still carry this stamp."""
    m = RunManifest.from_dict(manifest)
    digest = hashlib.sha256(json.dumps({"prune": m.metrics("prune"), "validate": m.metrics("validate")},
                                       sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"<!-- section of results {digest} -->"


def optional_section(run_dir: Path, manifest: RunManifest, plots: list[Path]) -> list[str]:
    """The Markdown of the optional Frontier section a benchmark placed in the run directory
    (``python -m bench.frontier place`` writes :data:`FRONTIER_SECTION` and :data:`FRONTIER_PLOT`); its plot is
    appended to ``plots`` when present. Empty when there is no section file. A file stamped
    (:func:`section_stamp`) with other prune or validate results than the run's is replaced by one line saying so;
    an unstamped file is shown as written."""
    path = run_dir / FRONTIER_SECTION
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    first, _, rest = text.partition("\n")
    if first.startswith("<!-- section of results "):
        if first != section_stamp(manifest):
            return ["", "## Frontier", "", f"`{FRONTIER_SECTION}` places earlier results of this run; place the run "
                    f"again: `python -m bench.frontier place --run-dir {run_dir}`.", ""]
        text = rest
    if (run_dir / FRONTIER_PLOT).is_file():
        plots.append(run_dir / FRONTIER_PLOT)
    return ["", *text.rstrip("\n").split("\n"), ""]


def write_plots(run_dir: Path, manifest: RunManifest | dict[str, Any], report: dict[str, Any]) -> list[Path]:
    """Pruning trajectory, channels per layer, latency and accuracy per format (PNG, atomically, under
    ``run_dir/plots``); each only when the manifest or report has its data. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[Path] = []
    plots = run_dir / "plots"

    def save(fig: Any, name: str) -> None:
        with atomic_path(plots / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        out.append(plots / name)

    prune = RunManifest.from_dict(manifest, run_dir / "manifest.json").metrics("prune")
    hist = prune.get("history", [])
    if hist:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [0.0] + [100 * h["flops_reduction"] for h in hist]
        ys = [prune.get("reference_val_accuracy")] + [h["val_accuracy"] for h in hist]
        ax.plot(xs, ys, "o-")
        for h in hist:
            if not h["accepted"]:
                ax.plot(100 * h["flops_reduction"], h["val_accuracy"], "rx", ms=10)
        ax.set_xlabel("FLOPs reduction (%)")
        ax.set_ylabel("val accuracy (%)")
        ax.set_title("Pruning trajectory (✕ = rejected)")
        ax.grid(alpha=0.3)
        save(fig, "pruning_trajectory.png")
    before, after = obj(prune.get("channels_before")), obj(prune.get("channels_after"))
    if before:
        names = list(before)  # a layer missing after pruning was in a block removed whole: 0 kept
        fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names)), 4))
        ax.bar(range(len(names)), [before[n] for n in names], label="before", color="#bbb")
        ax.bar(range(len(names)), [after.get(n, 0) for n in names], label="after", color="#1f77b4")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_ylabel("output channels")
        ax.legend()
        ax.set_title("Channels kept per conv layer")
        save(fig, "channels_per_layer.png")
    fmts = [f for f in ReportView.from_dict(report).formats if f.status == "ok"]
    if fmts:
        batches = sorted({b for f in fmts for b in f.latency_ms}, key=int)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        width = 0.8 / max(1, len(batches))
        for i, b in enumerate(batches):
            axes[0].bar([j + i * width for j in range(len(fmts))], [f.latency(b).get("p50", 0) for f in fmts],
                        width, label=f"batch {b}")
        axes[0].set_xticks(range(len(fmts)), [FORMAT_TITLES.get(f.name, f.name) for f in fmts], rotation=30, ha="right")
        axes[0].set_ylabel("p50 latency (ms)")
        axes[0].set_yscale("log")
        axes[0].legend()
        axes[1].bar(range(len(fmts)), [f.accuracy or 0 for f in fmts], color="#2ca02c",
                    yerr=[f.accuracy_se or 0 for f in fmts], capsize=3)
        axes[1].set_xticks(range(len(fmts)), [FORMAT_TITLES.get(f.name, f.name) for f in fmts], rotation=30, ha="right")
        accs = [f.accuracy for f in fmts if f.accuracy is not None]
        if accs:
            axes[1].set_ylim(max(0, min(accs) - 5), min(100, max(accs) + 2))
        axes[1].set_ylabel("test accuracy (%, ± SE)")
        save(fig, "latency_accuracy_per_format.png")
    return out


def load_manifest(run_dir: Path) -> dict[str, Any]:
    """``manifest.json`` of a run as the plain dict it holds (OSError / ValueError when missing or torn; unchecked:
    :meth:`RunManifest.load` reads and checks it into records)."""
    return json.loads((run_dir / "manifest.json").read_text())
