"""The ``validate`` stage: every final format on every runtime of this machine that can run it, on the whole test split.

Each ONNX artifact is opened with a plain session of each runtime in ``target.runtimes`` (onnxruntime CPU with full
graph optimization — INT8 QDQ on its integer kernels — and OpenVINO CPU), the way a user runs the file: the accuracies
the report states are those sessions' numbers, never a float simulation. Pruned vs unpruned speedups are timed per
runtime with the same interleaved protocol and gated alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ccpcsa.io.artifacts import atomic_write_json
from ccpcsa.io.checkpoint import load_checkpoint
from ccpcsa.models import count_complexity
from export.edge.timing import OTHER_LOAD_WARN
from export.tensorrt.engine_file import engine_name

from .artifacts import (
    BASELINE_CKPT,
    BASELINE_INT8_CPU_ONNX,
    MODEL_INT8_CPU_ONNX,
    MODEL_INT8_ONNX,
    MODEL_ONNX,
    MODEL_SIM_ONNX,
    MODEL_STEM,
    PRUNED_CKPT,
    VALIDATION,
)
from .checks import at_least, at_most, speedup
from .orchestrate import StageContext, StageOutcome
from .stages_export import (
    _fp32_onnx,
    _runner,
    eval_arrays,
    final_accuracy,
    final_accuracy_checks,
    final_split,
    quantize_cpu_flavour,
    reference_onnx,
)
from .stages_train import data_splits, eval_split, input_size

#: Which runtime each ONNX artifact is made for (the rest run it too, reported but not gated): the TensorRT flavour
#: (S8S8) is for TensorRT only; onnxruntime and OpenVINO run the U8S8 flavour's Q/DQ pairs on their integer kernels.
MADE_FOR = {"onnx": ("onnxruntime-cpu", "openvino-cpu", "tensorrt"), "onnx_simplified": ("onnxruntime-cpu", "openvino-cpu", "tensorrt"),
            "int8": ("tensorrt",), "int8_cpu": ("onnxruntime-cpu", "openvino-cpu")}


def _latency(ctx: StageContext, runner: Any) -> dict[str, Any]:
    """``{"latency_ms": {"<batch>": {"p50", "p90", "p95", "p99", "mean"}}, "images_per_s": {"<batch>": ...}}``."""
    from export.latency import measure_latency

    e = ctx.cfg.export
    rep = measure_latency(runner, batch_sizes=e.latency_batches, warmup=e.latency_warmup, iters=e.latency_iters)
    lat = {str(r.batch_size): {"p50": r.p50_ms, "p90": r.p90_ms, "p95": r.p95_ms, "p99": r.p99_ms, "mean": r.mean_ms}
           for r in rep.results}
    return {"latency_ms": lat, "images_per_s": {str(r.batch_size): r.images_per_s for r in rep.results}}


def _row(ctx: StageContext, name: str, path: Path, runner: Any, runtime: str, complexity: Any) -> dict[str, Any]:
    """One format on one runtime: accuracy on :func:`final_split` ± SE, latency, size, what the file is for."""
    lat = _latency(ctx, runner)
    made_for = MADE_FOR.get(name, (runtime,))
    return {"file": path.name, "precision": "int8" if name.startswith("int8") else "fp32", "runtime": runtime,
            "made_for": list(made_for), "gated": runtime in made_for or name.startswith("pytorch"),
            "size_bytes": path.stat().st_size, "params": complexity.params, "flops": complexity.macs,
            **final_accuracy(ctx, runner), "latency_ms": lat["latency_ms"], "images_per_s": lat["images_per_s"],
            "threads": ctx.cfg.export.threads, "status": "ok"}


def _parity_note(row: dict[str, Any], name: str, st: dict[str, Any]) -> None:
    if not st:
        return
    row["max_abs_diff"], row["top1_agreement"] = st.get("max_abs_diff"), st.get("top1_agreement")
    diff = f"max|Δ| {st['max_abs_diff']:.2e}, " if st.get("max_abs_diff") is not None and not name.startswith("int8") else ""
    sim = " (simulated TensorRT)" if name == "int8" else ""
    row["parity"] = f"{diff}top-1 {st.get('top1_agreement', 0):.2f}% vs {st.get('parity_vs')}{sim}"


def stage_validate(ctx: StageContext) -> StageOutcome:
    """Every format — PyTorch baseline and pruned, ONNX, simplified, both INT8 on each of ``target.runtimes``, built
    engines — on the whole test split (:func:`final_split`): accuracy with its image count and standard error, parity,
    size, latency; gates: speedup per runtime, latency budget, each format's accuracy drop vs the baseline on those
    same images on the runtimes it is made for (:data:`MADE_FOR`)."""
    from export.runtime import onnx_runner

    cfg = ctx.cfg
    base_ck = load_checkpoint(ctx.path(BASELINE_CKPT))
    outputs = reference_onnx(ctx, base_ck.model)
    manifest = ctx.manifest.data["stages"]
    rows: dict[str, Any] = {}
    onnx_files = {"onnx": ctx.path(MODEL_ONNX), "onnx_simplified": ctx.path(MODEL_SIM_ONNX), "int8": ctx.path(MODEL_INT8_ONNX),
                  "int8_cpu": ctx.path(MODEL_INT8_CPU_ONNX)}
    parity_of = {"onnx": "onnx", "onnx_simplified": "simplify", "int8": "int8", "int8_cpu": "int8_cpu"}
    base_c = count_complexity(base_ck.model, input_size(ctx))
    pruned_c = count_complexity(load_checkpoint(ctx.path(PRUNED_CKPT)).model, input_size(ctx))
    for name, path in {"pytorch_baseline": ctx.path(BASELINE_CKPT), "pytorch_pruned": ctx.path(PRUNED_CKPT)}.items():
        rows[name] = _row(ctx, name, path, _runner(ctx, path), "pytorch", base_c if name == "pytorch_baseline" else pruned_c)
    for runtime in cfg.target.runtimes:
        for name, path in onnx_files.items():
            if not path.exists() or (runtime != "onnxruntime-cpu" and name == "onnx" and _fp32_onnx(ctx) != path):
                continue  # other runtimes: the deployed FP32 file only (the simplified one when it exists)
            key = name if runtime == "onnxruntime-cpu" else f"{name}@{runtime}"
            ctx.say(f"validate: {path.name} on {runtime}")
            rows[key] = _row(ctx, name, path, onnx_runner(runtime, path, threads=cfg.export.threads), runtime, pruned_c)
            if runtime == "onnxruntime-cpu":  # the stages' parity was checked on onnxruntime
                _parity_note(rows[key], name, manifest.get(parity_of.get(name, ""), {}).get("metrics") or {})
    rows.update(_engine_rows(ctx, manifest, pruned_c))
    if ctx.device.type == "cuda":  # GPU latency rows (PyTorch eager / CUDA graph, onnxruntime CUDA): only on a CUDA run
        from .gpu_latency import cuda_rows

        rows.update(cuda_rows(ctx.path(PRUNED_CKPT), _fp32_onnx(ctx), ctx.device, input_size(ctx), eval_arrays(ctx)[0],
                              lambda r: _latency(ctx, r), lambda r: final_accuracy(ctx, r), pruned_c.params, pruned_c.macs))
    # the pruned model must be really faster: on each runtime, pruned vs unpruned, FP32 and INT8 (U8S8), interleaved
    fp32_ref = outputs[-1]
    per_runtime, checks = speedups(ctx, base_c.macs / pruned_c.macs, fp32_ref, outputs)
    main = per_runtime.get("onnxruntime-cpu") or next(iter(per_runtime.values()))
    sp, sp_int8 = main.get("fp32", {}), main.get("int8", {})
    reference = {"fp32": fp32_ref.name, **({"int8": BASELINE_INT8_CPU_ONNX} if sp_int8 else {})}
    if cfg.checks.latency_budget_ms is not None:
        b = str(cfg.checks.latency_budget_batch)
        best = min(r["latency_ms"][b]["p50"] for r in rows.values() if r.get("status") == "ok" and b in (r.get("latency_ms") or {}))
        checks.append(at_most(f"latency_p50_ms_b{b}", best, cfg.checks.latency_budget_ms))
    checks += final_accuracy_checks(rows, cfg.checks.max_accuracy_drop)
    evaluation = {"final_images": len(final_split(ctx)), "test_images": len(data_splits(ctx).test), "gate_images": len(eval_split(ctx))}
    record = {"formats": rows, "speedup": sp, "speedup_int8": sp_int8, "speedups": per_runtime, "speedup_reference": reference,
              "evaluation": evaluation, "runtimes": _identities(cfg.target.runtimes, cfg.export.threads)}
    out = atomic_write_json(ctx.path(VALIDATION), record)
    return StageOutcome(outputs=[out, *outputs], checks=checks, metrics=record)


def _identities(runtimes: list[str], threads: int) -> dict[str, Any]:
    """Each runtime's identity (version, CPU model and SIMD features, threads): what every speed number belongs to."""
    from export.edge.sessions import runtime_identity

    return {r: runtime_identity(r, threads) for r in runtimes}


def _engine_rows(ctx: StageContext, manifest: dict[str, Any], pruned_c: Any) -> dict[str, Any]:
    """The TensorRT engine rows: evaluated like every other format where the engine stage built one, else its status."""
    rows: dict[str, Any] = {}
    eng = manifest.get("engine", {})
    for prec in ctx.cfg.export.engine_precisions:
        m = (eng.get("metrics") or {}).get(prec) or {}
        row = {"file": engine_name(MODEL_STEM, prec), "precision": prec, "runtime": "tensorrt", "made_for": ["tensorrt"],
               "status": m.get("status", eng.get("status", "skipped")), "reason": m.get("reason", eng.get("reason", ""))}
        path = ctx.path(row["file"])
        if row["status"] == "ok" and path.exists():  # a built engine (GPU + TensorRT): evaluated like every other format
            runner = _runner(ctx, path)
            lat = _latency(ctx, runner)
            par = m.get("parity") or {}
            row.update({"size_bytes": path.stat().st_size, "params": pruned_c.params, "flops": pruned_c.macs,
                        **final_accuracy(ctx, runner), "latency_ms": lat["latency_ms"], "images_per_s": lat["images_per_s"],
                        "max_abs_diff": par.get("max_abs_diff"), "top1_agreement": par.get("top1_agreement"),
                        "parity": f"top-1 {par.get('top1_agreement', 0):.2f}% vs {par.get('parity_vs')}" if par else ""})
        rows[f"tensorrt_{prec}"] = row
    return rows


def speedups(ctx: StageContext, macs_ratio: float, base_onnx: Path, outputs: list[Path]) -> tuple[dict[str, Any], list[Any]]:
    """Pruned vs unpruned latency on each runtime of ``target.runtimes``, per ``export.latency_batches``: FP32 (the
    pruned model's FP32 ONNX vs ``base_onnx``, the unpruned model through the same export path: :func:`reference_onnx`)
    and, with ``export.int8_cpu``, INT8 U8S8 (``model.int8.cpu.onnx`` vs ``base_onnx`` quantized the same way,
    ``baseline.int8.cpu.onnx``, added to ``outputs``). Timed by :func:`export.latency.runtime_speedups`
    (``export.speedup_rounds`` interleaved rounds): speedup = median over rounds of the per-round ratio unpruned /
    pruned, with its standard error. Returns ``({runtime: {"fp32"|"int8": {batch: {unpruned_ms, pruned_ms, speedup,
    speedup_se, rounds, flops_ratio, efficiency}}}}, checks)`` with efficiency = speedup / MACs ratio. Gates, on every
    runtime: FP32 and INT8 speedup > 1 (``checks.require_speedup``) and FP32 efficiency ≥
    ``checks.min_speedup_efficiency`` (null: off), on the point estimates; names carry ``@<runtime>`` except
    onnxruntime-cpu's."""
    from export.latency import runtime_speedups

    cfg, e = ctx.cfg, ctx.cfg.export
    pairs = {"fp32": (base_onnx, _fp32_onnx(ctx))}
    int8 = ctx.path(MODEL_INT8_CPU_ONNX)
    if e.int8_cpu and int8.exists():
        base_int8 = ctx.path(BASELINE_INT8_CPU_ONNX)
        quantize_cpu_flavour(ctx, base_onnx, base_int8)
        outputs.append(base_int8)
        pairs["int8"] = (base_int8, int8)
    result: dict[str, dict[str, Any]] = {}
    checks = []
    for runtime in cfg.target.runtimes:
        at = "" if runtime == "onnxruntime-cpu" else f"@{runtime}"
        result[runtime] = {}
        for kind, (ref, new) in pairs.items():
            ctx.say(f"validate: timing pruned vs unpruned {kind.upper()} on {runtime}")
            got = runtime_speedups(runtime, ref, new, macs_ratio, threads=e.threads, batch_sizes=e.latency_batches,
                                   warmup=e.latency_warmup, rounds=e.speedup_rounds)
            result[runtime][kind] = got
            for b, m in got.items():
                if cfg.checks.require_speedup:
                    checks.append(speedup(m["speedup"], name=f"pruned_speedup_{kind}_b{b}{at}"))
                if kind == "fp32" and cfg.checks.min_speedup_efficiency is not None:
                    checks.append(at_least(f"speedup_efficiency_fp32_b{b}{at}", m["efficiency"], cfg.checks.min_speedup_efficiency))
    busy = max((m["other_load"] for r in result.values() for k in r.values() for m in k.values()
                if m.get("other_load") is not None), default=0.0)
    if busy > OTHER_LOAD_WARN:
        print(f"warning: other processes used {100 * busy:.0f}% of this machine's CPU while the speedups were timed; "
              f"they may be off — rerun with `--from validate` on a quiet machine", flush=True)
    return result, checks
