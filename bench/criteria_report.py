"""Markdown summary + plots of a criteria-benchmark session (``bench/criteria.py``), computed only from its results JSON.

    python -m bench.criteria --summary bench/results/<date>-<host>[-<preset>].json

Two kinds of session:

- **accuracy presets** (``cpu``, ``cpu-guard``, ``quick``, ``gpu``; issue #13): per MACs target a table of every
  criterion (and the Torch-Pruning anchor) — mean accuracy over seeds ± its standard error, Δ vs the baseline, MACs and
  parameters removed — the targets computed from the data (is CCPCSA the most accurate criterion, a tie within 0.3 pp
  counting; is it within 1.0 pp (CPU) / 0.5 pp (GPU) of the baseline), distillation on vs off, and how far Algorithm 1
  with the 0.5 pp guard gets each criterion;
- **speed presets** (``speed-r20``, ``speed-r56``; issue #15): per run the alignment, allocation, MACs, accuracy and the
  interleaved pruned-vs-unpruned speedup and efficiency (speedup / MACs ratio) at batch 1 and 32, FP32 and INT8, the
  latency-target runs, and onnxruntime's per-layer profile.

Writes ``<stem>-criteria.md`` beside the JSON and PNGs into ``<stem>-criteria/``. Nothing here is hard-coded about the
outcome.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from bench.criteria_presets import ANCHOR  # noqa: F401  (the anchor's name in the tables)
from bench.criteria_presets import REFERENCE_CRITERION as REFERENCE
from ccpcsa.io.artifacts import atomic_write_text

TIE_PP = 0.3  # CCPCSA counts as the most accurate when within this of the best criterion
TARGET_DROP_PP = {"cpu": 1.0, "gpu": 0.5}  # CCPCSA's drop vs the baseline at −50 % MACs, per preset
TARGET_EFFICIENCY = 0.9
CONV_OPS = ("Conv", "FusedConv", "QLinearConv", "NchwcConv", "ConvInteger")


def _x(v: Any) -> str:
    """A ratio as ``1.23×``, or ``—`` when unknown."""
    return "—" if v is None else f"{v:.2f}×"


def _f(v: Any, spec: str = ".2f", none: str = "—") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if r.get("status") == "ok" and r.get("accuracy") is not None]


def _pct(x: float | None) -> str:
    return _f(None if x is None else 100 * x, ".1f") + ("%" if x is not None else "")




def _mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (None for a single value)."""
    if len(values) < 2:
        return values[0], None
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def _pm(mean: float, se: float | None, run_se: float | None = None) -> str:
    if se is not None:
        return f"{mean:.2f} ± {se:.2f}"
    return f"{mean:.2f}" + (f" (± {run_se:.2f})" if run_se is not None else "")


# ------------------------------------------------------------------------------------------------ accuracy presets


def _main_runs(c: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs of the equal-MACs grid: not guard runs, not speed runs, distillation as the preset's default."""
    p = c["preset"]
    return [r for r in _ok(c["runs"]) if not r.get("guard") and not r.get("target_speedup") and r.get("distill", True) == p["distill"]]


def criteria_table(c: dict[str, Any], target: float) -> list[dict[str, Any]]:
    """Per criterion at ``target``: accuracies over seeds, mean ± SE, MACs/params removed, best first."""
    base = c["baseline"]["accuracy"]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in _main_runs(c):
        if abs(r["target"] - target) < 1e-9:
            by.setdefault(r["criterion"], []).append(r)
    out = []
    for crit, runs in by.items():
        accs = [r["accuracy"] for r in runs]
        mean, se = _mean_se(accs)
        out.append({"criterion": crit, "n": len(runs), "accuracies": accs, "mean": mean, "se": se, "delta": mean - base,
                    "run_se": statistics.mean(r.get("accuracy_se") or 0.0 for r in runs),
                    "flops_reduction": statistics.mean(r["flops_reduction"] for r in runs),
                    "params_reduction": statistics.mean(r["params_reduction"] for r in runs),
                    "seconds": statistics.mean(r.get("wall_seconds") or 0.0 for r in runs)})
    return sorted(out, key=lambda d: -d["mean"])


def target_verdicts(c: dict[str, Any], target: float = 0.5) -> list[str]:
    """The issue's targets at ``target`` MACs, computed from the table."""
    p = c["preset"]
    table = criteria_table(c, target)
    ref = next((d for d in table if d["criterion"] == REFERENCE), None)
    if ref is None or not table:
        return [f"- (no {REFERENCE} run at −{100 * target:.0f} % in this session)"]
    best = table[0]
    others = [d for d in table if d["criterion"] != REFERENCE]
    lead = ref["mean"] - max((d["mean"] for d in others), default=ref["mean"])
    wins = lead >= -TIE_PP
    rank = [d["criterion"] for d in table].index(REFERENCE) + 1
    out = [f"- **{REFERENCE} the most accurate at −{100 * target:.0f} % MACs (a tie within {TIE_PP} pp counts): "
           f"{'met' if wins else 'missed'}** — {REFERENCE} {ref['mean']:.2f} %, rank {rank} of {len(table)}; "
           + (f"best other: {max(others, key=lambda d: d['mean'])['criterion']} "
              f"{max(d['mean'] for d in others):.2f} % ({lead:+.2f} pp)." if others else "no other criterion ran.")]
    limit = TARGET_DROP_PP.get(p["name"], TARGET_DROP_PP["cpu"])
    drop = -ref["delta"]
    out.append(f"- **{REFERENCE} within {limit} pp of the baseline ({c['baseline']['accuracy']:.2f} %): "
               f"{'met' if drop <= limit else 'missed'}** — drop {drop:.2f} pp"
               + ("" if drop <= limit else f", {drop - limit:.2f} pp short") + ".")
    if best["criterion"] != REFERENCE and wins:
        out.append(f"- (the numerically best is {best['criterion']} at {best['mean']:.2f} %, within the tie margin)")
    return out


def _accuracy_section(c: dict[str, Any]) -> list[str]:
    base = c["baseline"]
    md = []
    targets = sorted({r["target"] for r in _main_runs(c)})
    for t in targets:
        table = criteria_table(c, t)
        md += [f"### −{100 * t:.0f} % MACs", ""]
        rows = [[f"**{d['criterion']}**" if d["criterion"] == REFERENCE else d["criterion"], str(d["n"]), _pm(d["mean"], d["se"], d["run_se"]),
                 f"{d['delta']:+.2f}", ", ".join(f"{a:.2f}" for a in d["accuracies"]), _pct(d["flops_reduction"]),
                 _pct(d["params_reduction"]), _f(d["seconds"] / 60, ".1f")] for d in table]
        md += _table(["criterion", "runs", "test acc % (mean ± SE over seeds; one run: ± test-set SE)", "Δ vs baseline pp",
                      "per run", "MACs removed", "params removed", "min/run"], rows) + [""]
    if not targets:
        md += ["(no equal-MACs runs in this session)", ""]
    md += [f"Baseline: {base['accuracy']:.2f} % on {base.get('accuracy_n') or 'all'} test images "
           f"(± {_f(base.get('accuracy_se'))} pp), {base['flops'] / 1e6:.1f} M MACs, {base['params']:,} parameters.", ""]
    return md


def _distill_section(c: dict[str, Any]) -> list[str]:
    p = c["preset"]
    runs = [r for r in _ok(c["runs"]) if not r.get("guard") and not r.get("target_speedup")]
    pairs = []
    for r in runs:
        if r.get("distill") is not p["distill"]:
            twin = next((q for q in runs if q["criterion"] == r["criterion"] and q["target"] == r["target"]
                         and q["seed"] == r["seed"] and q.get("distill") is p["distill"]), None)
            if twin:
                on, off = (twin, r) if p["distill"] else (r, twin)
                pairs.append([on["criterion"], f"−{100 * on['target']:.0f} %", f"{on['accuracy']:.2f}", f"{off['accuracy']:.2f}",
                              f"{on['accuracy'] - off['accuracy']:+.2f}"])
    if not pairs:
        return []
    return ["## Knowledge distillation on vs off", "",
            f"Every fine-tune with distillation from the unpruned (BAM) model: (1 − α)·CE + α·T²·KL(p_T ‖ q_T), "
            f"α = {p['distill_weight']}, T = {p['distill_temperature']} (Hinton et al. 2015); same seed, same schedule.", ""] + \
        _table(["criterion", "target", "with distillation %", "without %", "gain pp"], pairs) + [""]


def _guard_section(c: dict[str, Any]) -> list[str]:
    p = c["preset"]
    runs = [r for r in _ok(c["runs"]) if r.get("guard")]
    if not runs:
        return []
    rows = []
    for r in sorted(runs, key=lambda r: -r["flops_reduction"]):
        hist = r.get("history") or []
        accepted = [h for h in hist if h.get("accepted")]
        rejected = next((h for h in hist if not h.get("accepted")), None)
        rows.append([r["criterion"], _pct(r["flops_reduction"]), str(len(accepted)), f"{r['accuracy']:.2f}", f"{-r['accuracy_drop_pp']:+.2f}",
                     "—" if rejected is None else f"−{100 * rejected['flops_reduction']:.0f} % (val drop {rejected['drop_pp']:.2f} pp)",
                     r.get("stop_reason") or ""])
    return ["## Algorithm 1 with the guard on (τ = {} pp)".format(p["guard_tolerance"]), "",
            f"Steps of −{100 * p['guard_step']:.0f} % MACs up to −{100 * p['guard_target']:.0f} %; a step is accepted while the "
            "validation accuracy stays within τ of the unpruned model's; the first rejected step restores the last accepted model "
            "and stops. MACs removed = what the criterion reached before the guard stopped it.", ""] + \
        _table(["criterion", "MACs removed", "accepted steps", "test acc % (after the final fine-tune)", "Δ vs baseline pp", "rejected step",
                "stop"], rows) + [""]


# ------------------------------------------------------------------------------------------------ speed presets


def _speed_section(c: dict[str, Any]) -> list[str]:
    rows = []
    runs = [r for r in _ok(c["runs"]) if r.get("speedup")]
    for r in runs:
        cells = [f"`{r['key']}`", str(r.get("alignment") or r["round_to"]), r["allocation"], _pct(r["flops_reduction"]),
                 f"{r['flops_ratio']:.2f}×", f"{r['accuracy']:.2f}"]
        for kind in ("speedup", "speedup_int8"):
            for b in ("1", "32"):
                d = (r.get(kind) or {}).get(b) or {}
                se = f" ± {d['speedup_se']:.2f}" if d.get("speedup_se") is not None else ""
                cells.append(f"{d['speedup']:.2f}×{se} / {d['efficiency']:.2f}" if d else "—")
        rows.append(cells)
    if not rows:
        return ["(no finished speed run)", ""]
    md = _table(["run", "alignment", "allocation", "MACs removed", "MACs ratio", "test acc %", "FP32 b1 speedup / eff.",
                 "FP32 b32", "INT8 b1", "INT8 b32"], rows) + [""]
    md.append(f"Speedup: unpruned / pruned latency on onnxruntime CPU, {c['preset']['threads']} threads, measured interleaved "
              "by each run's `validate` stage (median of the per-round ratios ± SE where recorded; older runs: ratio of pooled "
              "p50s); efficiency = speedup / MACs ratio (target ≥ "
              f"{TARGET_EFFICIENCY}). INT8 = U8S8 (`model.int8.cpu.onnx`) vs the unpruned model quantized the same way.")
    busy = {r["key"]: max(d["other_load"] for k in ("speedup", "speedup_int8") for d in (r.get(k) or {}).values()
                          if d.get("other_load") is not None)
            for r in runs if any(d.get("other_load") is not None for k in ("speedup", "speedup_int8") for d in (r.get(k) or {}).values())}
    if busy:
        md.append(f"Other processes' share of the CPU while each run was timed: max {100 * max(busy.values()):.0f} %"
                  + "".join(f"; `{k}` {100 * v:.0f} %" for k, v in busy.items() if v > 0.1)
                  + (f" ({len(busy)} of {len(runs)} runs recorded it; the others were timed before it was)." if len(busy) < len(runs) else "."))
    lat = [r for r in c["runs"] if r.get("target_speedup") and r.get("latency_target")]
    if lat:
        md += ["", "Latency-target runs (`prune.target.speedup`; a failed run stopped short of its target):", ""]
        md += _table(["run", "target", "table's estimate with every layer at its floor", "measured at the end of pruning (interleaved)",
                      "MACs ratio", "validate FP32 speedup at that batch"],
                     [[f"`{r['key']}`", f"{r['latency_target']['target_speedup']:.2f}× @ b{r['latency_target']['batch']}",
                       _x(r['latency_target'].get('floor_speedup_estimate')), _x(r['latency_target'].get('final_speedup')),
                       _x(r.get('flops_ratio')),
                       _x(((r.get('speedup') or {}).get(str(r['latency_target']['batch'])) or {}).get('speedup'))
                       if r.get("status") == "ok" else f"— ({r.get('status')}: {r.get('reason', '')})"] for r in lat])
    old = {(r["criterion"], r["target"]): r for r in runs
           if str(r["round_to"]) == "8" and r["allocation"] == "global" and not r.get("target_speedup")}
    cmp = []
    for r in runs:
        if r.get("target_speedup"):
            continue
        ref = old.get((r["criterion"], r["target"]))
        if ref is not None and r is not ref:
            cmp.append(f"- `{r['key']}` vs `{ref['key']}` (old alignment, same MACs target): accuracy "
                       f"{r['accuracy'] - ref['accuracy']:+.2f} pp ({'within' if r['accuracy'] >= ref['accuracy'] - 0.3 else 'outside'} "
                       "the 0.3 pp target).")
        for (crit, target), o in old.items():
            if ref is None and crit == r["criterion"] and target != r["target"] and str(r["round_to"]) != "8":
                sp = lambda x, b: ((x.get("speedup") or {}).get(b) or {}).get("speedup")  # noqa: E731
                cmp.append(f"- `{r['key']}` vs `{o['key']}` (old alignment at −{round(100 * target)} % MACs; same runtime, "
                           f"compare at equal measured speed): accuracy {r['accuracy'] - o['accuracy']:+.2f} pp, FP32 speedup "
                           f"b1 {_x(sp(r, '1'))} vs {_x(sp(o, '1'))}, b32 {_x(sp(r, '32'))} vs {_x(sp(o, '32'))}.")
    return md + ([""] + cmp if cmp else []) + [""]


def _profile_pick(c: dict[str, Any]) -> str | None:
    prof = c.get("profile") or {}
    keys = [k for k in prof if k != "unpruned"]
    auto = [k for k in keys if "-rauto-" in k and "-x" not in k]  # the runtime-aligned −50 % run, else the first
    return auto[0] if auto else (keys[0] if keys else None)


def _conv_us(p: dict[str, Any]) -> float:
    return sum(v["us"] for k, v in (p.get("ops") or {}).items() if k in CONV_OPS)


def _executed_macs(c: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """Nominal (torch-pruning) vs executed (ORT profile: conv/GEMM MACs from the shapes ORT really runs) MACs per model."""
    prof = c.get("profile") or {}
    rows_by_key = {r["key"]: r for r in _ok(c["runs"])}
    u = ((prof.get("unpruned") or {}).get("fp32") or {}).get("1") or {}
    if not u:
        return []
    head = ["model", "nominal MACs M", "ORT executed conv MACs M", "executed / nominal", "nominal ratio", "executed ratio",
            "ReorderOutput nodes (µs, b1)", "ORT FP32 model_run b1 µs", "b32 µs"]
    rows = []
    for key in ["unpruned"] + [k for k in prof if k != "unpruned"]:
        d1 = ((prof[key].get("fp32") or {}).get("1")) or {}
        d32 = ((prof[key].get("fp32") or {}).get("32")) or {}
        if not d1:
            continue
        nominal = base["flops"] if key == "unpruned" else (rows_by_key.get(key) or {}).get("flops")
        ro = (d1.get("ops") or {}).get("ReorderOutput") or {}
        rows.append([key, _f(nominal / 1e6 if nominal else None), f"{d1['macs_per_image'] / 1e6:.2f}",
                     _f(d1["macs_per_image"] / nominal if nominal else None), _f(base["flops"] / nominal if nominal else None) + "×",
                     f"{u['macs_per_image'] / max(1, d1['macs_per_image']):.2f}×",
                     f"{int(ro.get('nodes', 0))} ({ro.get('us', 0.0):.0f})", f"{d1['model_run_us']:.0f}", _f(d32.get("model_run_us"), ".0f")])
    out = ["Nominal MACs (what the FLOPs ratio counts) vs the conv MACs onnxruntime really executes (from the weight and "
           "output shapes its profiler records for each conv node, i.e. after its NCHWc layout transform pads channel counts "
           "to its SIMD block):", ""] + _table(head, rows)
    worst = max((r for r in rows[1:]), key=lambda r: float(r[3]) if r[3] != "—" else 0.0, default=None)
    if worst is not None and worst[3] != "—" and float(worst[3]) > 1.05:
        d1 = ((prof[worst[0]].get("fp32") or {}).get("1")) or {}
        pads = sorted({tuple(v["channels"]) for v in (d1.get("nodes") or {}).values() if v.get("channels") and v["channels"][0] != v["channels"][1]})
        block = math.gcd(*[a for a, _ in pads]) if pads else None
        seen = ", ".join(f"{a}→{b}" for a, b in pads[:8])
        out += ["", f"`{worst[0]}` executes {float(worst[3]):.2f}× its nominal MACs"
                + (f": its convs run at padded widths and `ReorderOutput` nodes cut them back to the real ones ({seen} "
                   f"channels), so channels removed below a multiple of {block} save no conv time on this CPU and add reorder "
                   f"work; `round_to` = {block} would keep every width on the block." if pads else ".")]
    return out + [""]


def _profile_section(c: dict[str, Any], base: dict[str, Any]) -> list[str]:
    prof = c.get("profile") or {}
    key = _profile_pick(c)
    if "unpruned" not in prof or key is None:
        return ["(no profile in this session)"]
    out = _executed_macs(c, base)
    out += [f"onnxruntime profiler (`SessionOptions.enable_profiling`, CPU, {c['preset']['threads']} threads, sequential), "
            f"kernel time per inference, unpruned vs `{key}`. *Overhead* = `model_run` time outside every kernel.", ""]
    for prec in ("fp32", "int8_cpu", "int8"):
        for b in ("1", "32"):
            u = ((prof["unpruned"].get(prec) or {}).get(b)) or {}
            q = ((prof[key].get(prec) or {}).get(b)) or {}
            if not u or not q:
                continue
            macs = ""
            if prec == "fp32":
                macs = (f", conv+GEMM MACs/image {u['macs_per_image'] / 1e6:.1f} → {q['macs_per_image'] / 1e6:.1f} M "
                        f"({u['macs_per_image'] / max(1, q['macs_per_image']):.2f}×)")
            title = {"fp32": "FP32", "int8_cpu": "INT8 U8S8 (CPU flavour)", "int8": "INT8 S8S8 (TensorRT flavour)"}[prec]
            out += [f"**{title}, batch {b}** — model_run {u['model_run_us']:.0f} → {q['model_run_us']:.0f} µs "
                    f"({u['model_run_us'] / q['model_run_us']:.2f}×){macs}", ""]
            ops = list(dict.fromkeys(list(u["ops"])[:8] + list(q["ops"])[:8]))
            rows = []
            for o in ops:
                a, z = (u["ops"].get(o) or {}).get("us", 0.0), (q["ops"].get(o) or {}).get("us", 0.0)
                rows.append([o, f"{a:.0f} ({100 * a / u['model_run_us']:.0f}%)", f"{z:.0f} ({100 * z / q['model_run_us']:.0f}%)",
                             f"{a / z:.2f}×" if z else "—"])
            rows.append(["*overhead*", f"{u['overhead_us']:.0f} ({100 * u['overhead_us'] / u['model_run_us']:.0f}%)",
                         f"{q['overhead_us']:.0f} ({100 * q['overhead_us'] / q['model_run_us']:.0f}%)",
                         f"{u['overhead_us'] / q['overhead_us']:.2f}×" if q["overhead_us"] else "—"])
            out += _table(["op type", "unpruned µs (share)", "pruned µs (share)", "ratio"], rows) + [""]
            cu, cq = _conv_us(u), _conv_us(q)
            mu = sum(v["macs"] for v in u["ops"].values())
            mq = sum(v["macs"] for v in q["ops"].values())
            rest_u, rest_q = u["model_run_us"] - cu, q["model_run_us"] - cq
            if prec == "fp32" and cu and cq and mq:
                cap = u["model_run_us"] / rest_q if rest_q > 0 else float("inf")
                out += [f"Conv kernels: {cu:.0f} → {cq:.0f} µs ({cu / cq:.2f}× for a {mu / mq:.2f}× conv-MAC cut, "
                        f"efficiency {cu / cq / (mu / mq):.2f}); everything else (other kernels + overhead): {rest_u:.0f} → "
                        f"{rest_q:.0f} µs, {100 * rest_u / u['model_run_us']:.0f}% of the unpruned time. Even with free convs the "
                        f"pruned model could be at most {cap:.2f}× faster than the unpruned one at this batch size.", ""]
            if prec.startswith("int8"):
                for label, d in (("unpruned", u), ("pruned", q)):
                    ops_ = d.get("ops") or {}
                    qconv, fconv = (ops_.get("QLinearConv") or {}).get("nodes", 0), sum((ops_.get(o) or {}).get("nodes", 0)
                                                                                        for o in ("Conv", "FusedConv", "NchwcConv"))
                    qdq = sum((ops_.get(o) or {}).get("us", 0.0) for o in ("QuantizeLinear", "DequantizeLinear", "Transpose"))
                    out.append(f"- {title} {label}: {qconv} conv node(s) run as QLinearConv, {fconv} stay float Conv between "
                               f"Dequantize/Quantize nodes; QuantizeLinear + DequantizeLinear + Transpose take {qdq:.0f} µs "
                               f"({100 * qdq / d['model_run_us']:.0f}% of the run).")
                out.append("")
            # per-layer: the conv nodes that dominate
            nodes = [(n, v) for n, v in u["nodes"].items() if v["op"] in CONV_OPS][:8]
            rows = []
            for n, v in nodes:
                w = q["nodes"].get(n)
                rows.append([f"`{n}`", f"{v['macs'] / 1e6:.2f}", _f(w["macs"] / 1e6 if w else None), f"{v['us']:.0f}",
                             _f(w["us"] if w else None, ".0f"),
                             _f((v["us"] / w["us"]) / (v["macs"] / w["macs"]) if w and w["us"] and w["macs"] and v["macs"] else None)])
            if rows and prec == "fp32":
                out += _table(["top conv nodes (unpruned)", "MACs M unpruned", "MACs M pruned", "µs unpruned", "µs pruned",
                               "time cut / MAC cut"], rows) + [""]
    return out



# ------------------------------------------------------------------------------------------------ plots


def _save(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure to ``path`` atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    from ccpcsa.io.artifacts import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _plots(c: dict[str, Any], plot_dir: Path) -> list[Path]:
    """accuracy vs MACs removed (a point per run, a line per criterion through the seed means); for speed sessions,
    measured speedup vs MACs ratio with the y = x limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    runs = _main_runs(c)
    if runs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for crit in sorted({r["criterion"] for r in runs}):
            pts = sorted((r["flops_reduction"], r["accuracy"]) for r in runs if r["criterion"] == crit)
            ax.plot([100 * x for x, _ in pts], [y for _, y in pts], "o-" if crit == REFERENCE else ".--", label=crit,
                    lw=2.2 if crit == REFERENCE else 1.0)
        ax.axhline(c["baseline"]["accuracy"], color="k", lw=0.8, ls=":", label="baseline")
        ax.set_xlabel("MACs removed %")
        ax.set_ylabel("test top-1 %")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, plot_dir / "accuracy_vs_macs.png"))
    sp = [r for r in _ok(c["runs"]) if r.get("speedup")]
    if sp:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for b, m in (("1", "o"), ("32", "s")):
            ax.scatter([r["flops_ratio"] for r in sp], [r["speedup"][b]["speedup"] for r in sp if b in r["speedup"]], marker=m,
                       label=f"FP32 batch {b}")
        hi = max(r["flops_ratio"] for r in sp) * 1.1
        ax.plot([1, hi], [1, hi], "k:", lw=0.8, label="speedup = MACs ratio")
        ax.set_xlabel("MACs ratio (unpruned / pruned)")
        ax.set_ylabel("measured speedup (onnxruntime CPU)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, plot_dir / "speedup_vs_macs_ratio.png"))
    return paths


def write_summary(data: dict[str, Any], json_path: Path) -> list[Path]:
    """Write ``<stem>-criteria.md`` and ``<stem>-criteria/*.png`` beside ``json_path`` from its ``results.criteria``."""
    c = data["results"]["criteria"]
    p = c["preset"]
    stem = json_path.stem
    md_path = json_path.with_name(f"{stem}-criteria.md")
    plot_dir = json_path.with_name(f"{stem}-criteria")
    plots = _plots(c, plot_dir)
    m = data.get("machine") or {}
    libs = m.get("libraries") or {}
    runs = c.get("runs") or []
    ok = _ok(runs)
    steps = p.get("steps_per_epoch")
    epoch = f"{steps} steps × 128 images" if steps else "a full epoch"
    speed = p.get("until") is None
    title = "Runtime-aligned widths and latency targets" if speed else "Pruning criteria at equal MACs and equal budget"
    md = [f"# {title} — {p['model']}, CIFAR-10 (preset `{p['name']}`)", "",
          f"{data.get('date')} on `{m.get('host')}`: {m.get('cpus')} cores ({m.get('cpus_usable')} usable), {m.get('cpu')}, "
          f"{m.get('memory_gib')} GiB, GPU: {m.get('gpu') or 'none'}; Python {m.get('python')}, "
          + ", ".join(f"{k} {v}" for k, v in libs.items() if v) + ".", "",
          f"Command: `{data.get('command')}` — raw results: [`{json_path.name}`]({json_path.name}). "
          f"Session wall time {_f((c.get('wall_seconds') or 0) / 60, '.1f')} min (sum of the run times, earlier sessions "
          f"included: {sum(r.get('wall_seconds') or 0 for r in runs) / 60:.1f} min, {p.get('jobs', 1)} at a time); "
          f"{len(ok)} of {len(runs)} runs ok{'' if c.get('complete') else ', INCOMPLETE'}.", "",
          "## Protocol", "",
          f"- Start: `{c.get('baseline_checkpoint')}` (trained on a GPU, used as given); BAM attached and retrained "
          f"{p['attention_epochs']} epoch(s) of {p.get('attention_steps') or 'all'} steps; every run copies that shared run.",
          f"- Algorithm 1 for every criterion, same budget: {p['iterations']} pruning steps to the target, each after one "
          f"statistics/training epoch and followed by {p['finetune_epochs']} fine-tune epoch(s); BAM removed; "
          f"{p['final_finetune_epochs']} final fine-tune epoch(s); an epoch is {epoch}, lr {p['prune_lr']} cosine; "
          + (f"knowledge distillation from the unpruned model (α {p['distill_weight']}, T {p['distill_temperature']}) in every "
             "fine-tune" if p["distill"] else "no distillation") + "; the guard off except in guard runs.",
          (f"- Kept widths are multiples of {p['round_to']} (`prune.widths.round_to`), allocation `{p['allocation']}`"
           if not speed else
           "- Alignment (`prune.widths.round_to`; auto = this CPU's SIMD block) and allocation per run, as in the table")
          + "; MACs from torch-pruning's counter on the deployed graph (BAM removed).",
          f"- Accuracy: top-1 of the pruned PyTorch model on {'a seeded sample of ' + str(p['eval_images']) if p.get('eval_images') else 'all 10,000'} "
          "test images; a mean over seeds carries the standard error over seeds, one run its test-set standard error. "
          + _load_note(runs, m), ""]
    if speed:
        md += ["## Speed at −50 % MACs and latency targets", ""] + _speed_section(c)
        if plots:
            md += [f"![speedup vs MACs ratio]({plot_dir.name}/speedup_vs_macs_ratio.png)", ""]
        md += ["## Where the time goes (per-layer profile)", ""] + _profile_section(c, c["baseline"])
    else:
        md += ["## Targets — where we stand", ""] + target_verdicts(c) + [""]
        md += ["## Accuracy at equal MACs", ""] + _accuracy_section(c)
        if plots:
            md += [f"![accuracy vs MACs]({plot_dir.name}/accuracy_vs_macs.png)", ""]
        md += _distill_section(c) + _guard_section(c)
    bad = [r for r in runs if r.get("status") != "ok"]
    short = [r for r in ok if not r.get("guard") and not r.get("target_speedup") and r["flops_reduction"] < r["target"] - 0.005]
    notes = [f"- `{r['key']}`: {r.get('status')} at {r.get('failed_stage', '?')}: {r.get('reason', '')}" for r in bad]
    notes += [f"- `{r['key']}` reached only −{100 * r['flops_reduction']:.1f}% MACs (target −{100 * r['target']:.0f}%; "
              f"stop: {r.get('stop_reason')})" for r in short]
    over = [r for r in ok if not r.get("guard") and not r.get("target_speedup") and r["flops_reduction"] > r["target"] + 0.02]
    notes += [f"- `{r['key']}` overshot to −{100 * r['flops_reduction']:.1f}% MACs (target −{100 * r['target']:.0f}%): its "
              "order ends on a coarse block no other next block could replace" for r in over]
    md += ["## Notes", ""] + (notes or ["- every run finished; every run with a MACs target reached it (within 2 pp of MACs)."])
    paths = [atomic_write_text(md_path, "\n".join(md) + "\n")] + plots
    for path in paths:
        path.chmod(0o644)  # results to commit (the atomic writer creates files 0600)
    return paths


def _load_note(runs: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    loads = [r["load_avg_1min"] for r in runs if r.get("load_avg_1min") is not None]
    cores = machine.get("cpus_usable") or machine.get("cpus") or 0
    if not loads:
        return "The cores may have been shared with other jobs."
    busy = sum(1 for v in loads if v > cores + 0.5)
    return (f"1-min load average at the end of each run: median {statistics.median(loads):.1f}, max {max(loads):.1f} on {cores} "
            f"cores — {busy} of {len(loads)} runs ended with more runnable work than cores (other jobs competing; their "
            f"latencies are noisier than an idle machine's).")


