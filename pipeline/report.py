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

import json
from pathlib import Path
from typing import Any

from ccpcsa.io.artifacts import atomic_path, atomic_write_json, atomic_write_text

from .accuracy import format_accuracy

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


def build_report(manifest: dict[str, Any]) -> dict[str, Any]:
    """Assemble the report dict from a manifest (pure function of its contents)."""
    stages = manifest.get("stages", {})
    val: dict[str, Any] = stages.get("validate", {}).get("metrics") or {}
    formats: dict[str, Any] = val.get("formats", {})
    base = (stages.get("baseline", {}).get("metrics") or {})
    prune = (stages.get("prune", {}).get("metrics") or {})
    out_stages = []
    for name, rec in stages.items():
        if name == "report" or rec.get("status") == "running":  # a record of an interrupted stage is no result
            continue
        outputs = rec.get("outputs") or {}
        artifact = next(iter(outputs), None)
        m = dict(rec.get("metrics") or {})
        fmt = formats.get(STAGE_FORMAT.get(name, ""), {})
        metrics = {k: fmt.get(k, m.get(k)) for k in SCHEMA_KEYS}
        # the final (validate) evaluation when there is one, else the stage's own: never a mix of the two
        metrics.update({k: (fmt if fmt.get("accuracy") is not None else m).get(k) for k in ACCURACY_KEYS})
        if name == "engine":
            metrics["engines"] = {k: v for k, v in formats.items() if k.startswith("tensorrt")}
        out_stages.append({"name": name, "status": rec.get("status"), "reason": rec.get("reason", ""), "artifact": artifact,
                           "sha256": outputs.get(artifact) if artifact else None, "metrics": metrics,
                           "checks": [{k: c[k] for k in ("name", "passed", "value", "threshold")} for c in rec.get("checks", [])],
                           "seconds": rec.get("seconds")})
    # Headline: the baseline as validate measured it, on the same (full test) images as every format row.
    base_fmt = formats.get("pytorch_baseline") or {}
    base_acc = base_fmt if base_fmt.get("accuracy") is not None else base
    return {"run": manifest.get("run"), "config": manifest.get("config"), "config_hash": manifest.get("config_hash"),
            "baseline": {**{k: base_acc.get(k) for k in ACCURACY_KEYS}, "params": base.get("params"), "flops": base.get("flops"),
                         "weights": base.get("weights")},
            "evaluation": val.get("evaluation")
            or {"final_images": None, "test_images": None, "gate_images": base.get("accuracy_n")},
            "stages": out_stages, "formats": [{"name": k, **v} for k, v in formats.items()],
            "speedup": val.get("speedup", {}), "speedup_int8": val.get("speedup_int8", {}),
            "speedup_reference": val.get("speedup_reference", {}),
            "speedups": speedups_by_runtime(val),
            "runtimes": val.get("runtimes", {}),
            "target": prune.get("target"),
            "pruning": {k: prune.get(k) for k in ("alignment", "alignment_reason", "allocation", "left_whole", "latency",
                                                  "dropped_blocks")}}


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


def speedups_by_runtime(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{runtime: {"fp32"|"int8": {batch: …}}}`` of a validate record or report; a run validated before per-runtime
    timing has onnxruntime-cpu's only (``speedup`` / ``speedup_int8``)."""
    return record.get("speedups") or {"onnxruntime-cpu": {k: s for k, s in (("fp32", record.get("speedup")),
                                                                            ("int8", record.get("speedup_int8"))) if s}}


def speedup_section(report: dict[str, Any]) -> list[str]:
    """Markdown: pruned vs unpruned on each runtime of this machine (FP32 and INT8 U8S8, interleaved timing) — speedup,
    MACs ratio and efficiency (speedup / MACs ratio) per batch, each runtime named with its version, CPU and threads —
    and how the widths were chosen (for which target)."""
    per = speedups_by_runtime(report)
    rows = [(rt, kind, b, s) for rt, kinds in per.items()
            for kind, sp in (("FP32", kinds.get("fp32") or {}), ("INT8 (U8S8)", kinds.get("int8") or {})) for b, s in sp.items()]
    if not rows:
        return []
    md = ["## Pruned vs unpruned, per runtime (interleaved timing)", "",
          "| runtime | precision | batch | unpruned ms | pruned ms | speedup ± SE | MACs ratio | efficiency (speedup / MACs ratio) |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {rt} | {kind} | {b} | {s['unpruned_ms']:.3f} | {s['pruned_ms']:.3f} | {s['speedup']:.2f}×{_se(s)} | "
           f"{s['flops_ratio']:.2f}× | {s['efficiency']:.2f} |" for rt, kind, b, s in rows]
    idents = report.get("runtimes") or {}
    md += ["", "Runtimes: " + "; ".join(runtime_label(rt, idents.get(rt)) for rt in per) + "."]
    rounds = {s.get("rounds") for *_, s in rows} - {None}
    if rounds:
        md += ["", f"Speedup: median over {'/'.join(map(str, sorted(rounds)))} interleaved rounds of the per-round ratio "
               "unpruned / pruned (onnxruntime's thread spinning off in both sessions), ± its standard error."]
        ref = report.get("speedup_reference") or {}
        if ref:
            md[-1] += (" Unpruned reference: the unpruned model through the same export path ("
                       + ", ".join(f"{k.upper()} `{v}`" for k, v in ref.items()) + ").")
    busy = [s["other_load"] for *_, s in rows if s.get("other_load") is not None]
    if busy:
        md[-1] += (f" Other processes used at most {100 * max(busy):.0f} % of the machine's CPU while it was timed"
                   + (" — **these speedups were measured on a busy machine**." if max(busy) > 0.1 else "."))
    target = report.get("target") or {}
    if target:
        md += ["", f"Target the widths and latency steps were chosen for: {target.get('label') or target.get('name')}"
               + (f" (measured on the device, `{target['file']}`)" if target.get("file") else " (measured on this machine)") + "."]
    p = report.get("pruning") or {}
    if p.get("alignment"):
        md += ["", f"Kept widths are multiples of {p['alignment']} ({p.get('alignment_reason') or ''}); allocation "
               f"`{p.get('allocation')}`."]
        if p.get("dropped_blocks"):
            md.append("Removed whole (`prune.drop_blocks`): " + ", ".join(f"`{b}`" for b in p["dropped_blocks"]) + ".")
        if p.get("left_whole"):
            md.append("Left whole (cannot be pruned consistently): " + "; ".join(f"`{k}` ({v})" for k, v in p["left_whole"].items()) + ".")
        lat = p.get("latency") or {}
        if lat.get("target_speedup"):
            md.append(f"Latency target: {lat['target_speedup']:.2f}× at batch {lat.get('batch')} → measured "
                      f"{_fmt(lat.get('final_speedup'))}× at the end of pruning.")
    return md + [""]


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "—"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def format_table(report: dict[str, Any]) -> str:
    """The per-format Markdown table (also printed at the end of a run)."""
    batches = sorted({b for f in report["formats"] for b in (f.get("latency_ms") or {})}, key=int)
    head = ["format", "file", "runtime", "size", "params", "MACs", "accuracy % ± SE", "n", "Δacc pp"]
    for b in batches:
        head += [f"p50 ms b{b}", f"p95 ms b{b}", f"img/s b{b}"]
    head += ["parity", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_acc = report["baseline"].get("accuracy")
    for f in report["formats"]:
        lat = f.get("latency_ms") or {}
        acc = f.get("accuracy")
        title = FORMAT_TITLES.get(f["name"].split("@")[0], f["name"])
        runtime = f.get("runtime") or ("onnxruntime-cpu" if f.get("file", "").endswith(".onnx") else "—")
        if f.get("gated") is False:
            runtime += " (not its runtime: made for " + ", ".join(f.get("made_for") or []) + "; not gated)"
        row = [title, f.get("file") or "—", runtime,
               _fmt(f.get("size_bytes") / 1024, ".0f") + " KiB" if f.get("size_bytes") else "—",
               _fmt(f.get("params"), ",d") if isinstance(f.get("params"), int) else "—",
               _fmt(f.get("flops") / 1e6, ".1f") + " M" if f.get("flops") else "—",
               format_accuracy(acc, f.get("accuracy_se")), _fmt(f.get("accuracy_n"), ",d") if isinstance(f.get("accuracy_n"), int) else "—",
               _fmt(acc - base_acc, "+.2f") if acc is not None and base_acc is not None else "—"]
        for b in batches:
            s = lat.get(b) or {}
            row += [_fmt(s.get("p50")), _fmt(s.get("p95")), _fmt((f.get("images_per_s") or {}).get(b), ".0f")]
        par = f.get("parity") or ""
        row += [par or "—", f.get("status", "ok") + (f" ({f['reason']})" if f.get("reason") else "")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def evaluation_note(report: dict[str, Any]) -> str:
    """One paragraph under the table: what the accuracies are measured on and what ± means."""
    ev = report.get("evaluation") or {}
    final, test, gate = ev.get("final_images"), ev.get("test_images"), ev.get("gate_images")

    def images(n: Any) -> str:
        if not isinstance(n, int):
            return "the test split"
        return f"all {n:,} test images" if n == test else f"a fixed seeded sample of {n:,} of the {test:,} test images"

    text = (f"Accuracy: top-1 on {images(final)} (`checks.final_eval_images`), ± one standard error √(p(1−p)/n) in "
            "percentage points; Δacc against the PyTorch baseline on the same images.")
    w = (report.get("baseline") or {}).get("weights") or {}
    if w.get("source") and w["source"] != "trained":
        text += f" Baseline weights: `{w.get('path')}` ({w['source']}, SHA-256 `{w.get('sha256')}`), used as given."
    if isinstance(gate, int) and isinstance(test, int):
        text += f" The intermediate gates (prune, ONNX, simplify, INT8, engine) measured on {images(gate)} (`checks.eval_images`)."
    return text


def write_report(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """Write report.json, report.md and plots/*.png atomically; return the paths written."""
    from .device_result import device_report

    report = build_report(manifest)
    measured, device_md = device_report(run_dir)  # results brought back from the target (report --device-result)
    if measured:
        report["device_results"] = measured
    paths = [atomic_write_json(run_dir / "report.json", report)]
    plots = write_plots(run_dir, manifest, report)
    md = [f"# Run `{report['run']}`", "", f"config hash `{report['config_hash']}`", "", "## Formats", "", format_table(report), "",
          evaluation_note(report), ""]
    md += speedup_section(report)
    md += device_md
    md += ["## Stages", "", "| stage | status | reason | seconds | checks |", "|---|---|---|---|---|"]
    for s in report["stages"]:
        checks = "; ".join(f"{c['name']} {'✔' if c['passed'] else '✘'} {_fmt(c['value'], '.4g')} (≤/≥ {c['threshold']})" for c in s["checks"])
        md.append(f"| {s['name']} | {s['status']} | {s['reason'] or ''} | {_fmt(s.get('seconds'), '.1f')} | {checks} |")
    md += frontier_section(run_dir, manifest, report, plots)
    md += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    paths.append(atomic_write_text(run_dir / "report.md", "\n".join(md) + "\n"))
    return paths + plots


def frontier_section(run_dir: Path, manifest: dict[str, Any], report: dict[str, Any], plots: list[Path]) -> list[str]:
    """With ``report.frontier`` set: this run's measured point drawn over the frontier of the same model
    (``plots/frontier.png``, appended to ``plots``) and where it sits. Of several files, the first readable one of
    this model whose widths are in this run's channel block (:func:`pipeline.frontier.alignments`; the run's CPU),
    else the first readable one, with a line saying its speeds come from another kind of CPU (also when the blocks
    agree but the frontier file's SIMD level — :func:`ccpcsa.surgery.alignment.simd_label`, e.g. AMX or not — is not
    this machine's); per batch the run against each criterion's frontier at its own speed
    (:func:`pipeline.frontier.compare_at_speed`: the frontier's accuracy there, the difference ± SE, above / tie /
    below). A missing or other-model frontier file is said in one line; nothing when unset."""
    from .frontier import (
        LABELS,
        alignments,
        by_criterion,
        compare_at_speed,
        frontier_paths,
        load_frontier,
        plot_frontier,
        run_point,
    )

    cfg = manifest.get("config") or {}
    paths = frontier_paths((cfg.get("report") or {}).get("frontier"))
    if not paths:
        return []
    model = (cfg.get("model") or {}).get("name")
    prune = (manifest.get("stages", {}).get("prune") or {}).get("metrics") or {}
    mine = prune.get("alignment")
    said: list[str] = []
    found: list[tuple[str, dict[str, Any], list[Any]]] = []
    for p in paths:
        try:
            result, points = load_frontier(Path(p).expanduser())
        except (OSError, ValueError) as exc:
            said.append(f"`report.frontier` {p} could not be read ({type(exc).__name__}: {exc}).")
            continue
        theirs = (result.get("preset") or {}).get("model")
        if theirs != model:
            said.append(f"`report.frontier` {p} is a frontier of {theirs}, this run prunes {model}; not drawn.")
            continue
        found.append((p, result, points))
    if not found:
        return ["## Frontier", "", *said, "No frontier drawn.", ""]
    path, result, points = next((f for f in found if mine and int(mine) in alignments(f[1])), found[0])
    me = run_point(report, f"{prune.get('method', 'this run')} (this run)")
    base = float((result.get("baseline") or {}).get("accuracy") or (report.get("baseline") or {}).get("accuracy") or 0.0)
    plots.append(plot_frontier(points, base, run_dir / "plots" / "frontier.png", run=me,
                               title=f"{model}: this run on the frontier of {Path(path).name}"))
    lines = ["## Frontier", "", f"This run over the accuracy-vs-measured-speedup frontier of `{path}` "
             f"({len(points)} points, {(result.get('machine') or {}).get('cpu', '?')}): `plots/frontier.png`.", ""]
    lines += [*said, ""] if said else []
    theirs_align = alignments(result)
    if mine and theirs_align and int(mine) not in theirs_align:
        lines += [f"Not like for like: the frontier's widths are in blocks of {'/'.join(map(str, theirs_align))}, this "
                  f"run's in blocks of {mine} (another CPU's SIMD width, `prune.round_to: auto`): its speedups were measured "
                  "on another kind of CPU. Point `report.frontier` at a frontier measured on this one "
                  "(`python -m bench.frontier`).", ""]
    else:
        from ccpcsa.surgery.alignment import simd_label

        theirs_simd, here = (result.get("machine") or {}).get("simd"), simd_label()
        if theirs_simd and theirs_simd != here:
            lines += [f"Not like for like: the frontier was timed on a CPU with {theirs_simd}, this run on one with "
                      f"{here}; the same channel blocks, but the runtime's kernels differ, and so do speedups. Point "
                      "`report.frontier` at a frontier measured on this kind of CPU (`python -m bench.frontier`).", ""]
    if me is None:
        return lines + ["This run has no measured speedup yet (validate did not run).", ""]
    for b, (s, se) in sorted(me.speedup.items(), key=lambda kv: int(kv[0])):
        reads = []
        for crit, front in sorted(by_criterion(points, b).items()):
            row = next(iter(compare_at_speed([me], front, b)), None)
            name = LABELS.get(crit, crit)
            reads.append(f"{name} {row['other_accuracy']:.2f} % (this run {row['difference_pp']:+.2f} ± {row['se_pp']:.2f} pp: "
                         f"{row['verdict']})" if row else f"{name} outside its range")
        lines.append(f"- batch {b}: this run {me.accuracy:.2f} ± {me.accuracy_se:.2f} % at {s:.2f}× ± {se:.2f}; each "
                     f"criterion's frontier there: {'; '.join(reads)}" if reads else
                     f"- batch {b}: this run {me.accuracy:.2f} ± {me.accuracy_se:.2f} % at {s:.2f}× ± {se:.2f}; the frontier "
                     "has no speedup at this batch")
    return lines + ["", "(A criterion's frontier: the Pareto front of its runs; a tie is within one combined SE of both "
                    "accuracies and of the speeds through the frontier's slope — `pipeline.frontier.compare_at_speed`.)", ""]


def write_plots(run_dir: Path, manifest: dict[str, Any], report: dict[str, Any]) -> list[Path]:
    """Pruning trajectory, channels per layer, latency and accuracy per format (PNG, atomically)."""
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

    prune = (manifest.get("stages", {}).get("prune") or {}).get("metrics") or {}
    hist = prune.get("history") or []
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
    before, after = prune.get("channels_before") or {}, prune.get("channels_after") or {}
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
    fmts = [f for f in report["formats"] if f.get("status", "ok") == "ok"]
    if fmts:
        batches = sorted({b for f in fmts for b in (f.get("latency_ms") or {})}, key=int)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        width = 0.8 / max(1, len(batches))
        for i, b in enumerate(batches):
            axes[0].bar([j + i * width for j in range(len(fmts))], [((f.get("latency_ms") or {}).get(b) or {}).get("p50", 0) for f in fmts],
                        width, label=f"batch {b}")
        axes[0].set_xticks(range(len(fmts)), [FORMAT_TITLES.get(f["name"], f["name"]) for f in fmts], rotation=30, ha="right")
        axes[0].set_ylabel("p50 latency (ms)")
        axes[0].set_yscale("log")
        axes[0].legend()
        axes[1].bar(range(len(fmts)), [f.get("accuracy") or 0 for f in fmts], color="#2ca02c",
                    yerr=[f.get("accuracy_se") or 0 for f in fmts], capsize=3)
        axes[1].set_xticks(range(len(fmts)), [FORMAT_TITLES.get(f["name"], f["name"]) for f in fmts], rotation=30, ha="right")
        accs = [f.get("accuracy") for f in fmts if f.get("accuracy") is not None]
        if accs:
            axes[1].set_ylim(max(0, min(accs) - 5), min(100, max(accs) + 2))
        axes[1].set_ylabel("test accuracy (%, ± SE)")
        save(fig, "latency_accuracy_per_format.png")
    return out


def load_manifest(run_dir: Path) -> dict[str, Any]:
    """Read ``manifest.json`` of a run."""
    return json.loads((run_dir / "manifest.json").read_text())
