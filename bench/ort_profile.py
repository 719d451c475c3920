"""onnxruntime's own profiler, read per node: kernel time, the MACs each conv really executes and the
``ReorderOutput`` nodes of the NCHWc layout — to say which layers dominate the latency and why a pruned model
is less faster than its FLOPs ratio (issue #8, ``bench/criteria.py``)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any


def conv_macs(op: str, ins: list[list[int]], outs: list[list[int]]) -> int:
    """MACs of one node call from the shapes onnxruntime's profiler records: a conv is
    ``prod(output shape) × prod(weight shape[1:])`` (C_in/groups · k_h · k_w per output element), a GEMM/MatMul
    ``prod(output shape) × K``. Float conv and GEMM nodes only, else 0 (QLinearConv's weights are pre-packed, the
    profile does not show their shape). The shapes are the executed ones, so channel padding is counted."""
    try:
        if op in ("Conv", "FusedConv", "NchwcConv"):
            w, o = ins[1], outs[0]
            return int(math.prod(o) * math.prod(w[1:]))
        if op in ("Gemm", "MatMul", "FusedGemm"):
            a, o = ins[0], outs[0]
            return int(math.prod(o) * a[-1])
    except (IndexError, TypeError):
        return 0
    return 0


def _shapes(entries: Any) -> list[list[int]]:
    """The profiler's ``[{"float": [1, 16, 32, 32]}, …]`` type-shape records as plain shape lists."""
    out = []
    for e in entries or []:
        if isinstance(e, dict) and e:
            out.append([int(d) for d in next(iter(e.values()))])
    return out


def profile_onnx(path: str | Path, batch: int, iters: int, threads: int, warmup: int = 5, keep_nodes: bool = True) -> dict[str, Any]:
    """Per-node and per-op-type kernel time (µs per inference) of an ONNX model on onnxruntime CPU at ``batch``
    (``SessionOptions.enable_profiling``; the first ``warmup`` runs are dropped), with each node's MACs from the
    recorded shapes, the mean ``model_run`` time and the part of it outside any kernel (framework overhead).
    ``keep_nodes``: also return the conv and ``ReorderOutput`` nodes one by one (else only per-op-type sums)."""
    import numpy as np
    import onnxruntime as ort

    from export.onnx_io import input_signature, load_onnx

    name, _, chw = input_signature(load_onnx(path))
    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(d) / "prof")
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((batch, *chw), dtype=np.float32)
        for _ in range(warmup + iters):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])[warmup:]
    if not runs:
        return {}
    t0 = runs[0]["ts"]
    nodes: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e.get("ts", 0) < t0:
            continue
        args = e.get("args") or {}
        n = e["name"][: -len("_kernel_time")]
        rec = nodes.setdefault(n, {"op": args.get("op_name", "?"), "us": 0.0, "calls": 0, "macs": 0})
        rec["us"] += e["dur"]
        rec["calls"] += 1
        ins, outs = _shapes(args.get("input_type_shape")), _shapes(args.get("output_type_shape"))
        rec["macs"] = conv_macs(rec["op"], ins, outs) // max(1, batch)
        if rec["op"] == "ReorderOutput" and ins and outs and len(ins[0]) > 1 and len(outs[0]) > 1:
            rec["channels"] = [ins[0][1], outs[0][1]]  # NCHWc (padded) width → real width
    k = len(runs)
    for rec in nodes.values():
        rec["us"] /= k
    ops: dict[str, dict[str, float]] = {}
    for rec in nodes.values():
        o = ops.setdefault(rec["op"], {"us": 0.0, "nodes": 0, "macs": 0})
        o["us"] += rec["us"]
        o["nodes"] += 1
        o["macs"] += rec["macs"]
    run_us = sum(r["dur"] for r in runs) / k
    kernel_us = sum(r["us"] for r in nodes.values())
    ranked = sorted(nodes.items(), key=lambda t: -t[1]["us"])
    keep = ("Conv", "FusedConv", "NchwcConv", "QLinearConv", "ReorderOutput")
    return {"batch": batch, "runs": k, "model_run_us": run_us, "kernel_us": kernel_us, "overhead_us": max(0.0, run_us - kernel_us),
            "macs_per_image": sum(r["macs"] for r in nodes.values()), "node_count": len(nodes),
            "ops": dict(sorted(ops.items(), key=lambda t: -t[1]["us"])),
            # the conv nodes (per-layer comparison) and the NCHWc reorders, slowest first
            "nodes": {n: {k: v[k] for k in ("op", "us", "macs", "channels") if k in v} for n, v in ranked if v["op"] in keep}
            if keep_nodes else {}}


def profile_models(models: dict[str, dict[str, str]], *, threads: int, iters: dict[str, int], batches: tuple[int, ...] = (1, 32),
                   rounds: int = 3) -> dict[str, Any]:
    """``{label: {"fp32": path, "int8": path, …}}`` → ``{label: {precision: {batch: profile}}}`` (:func:`profile_onnx`,
    ``iters[str(batch)]`` timed runs, default 50). Every model is profiled ``rounds`` times, the models interleaved
    within a round, and the round with the median ``model_run`` time is kept, so that a burst of load from other jobs
    does not land on one model only. Per-node records are kept for FP32 only."""
    out: dict[str, Any] = {}
    for prec in dict.fromkeys(k for files in models.values() for k in files):
        for b in batches:
            got: dict[str, list[dict[str, Any]]] = {}
            for _ in range(rounds):
                for label, files in models.items():
                    path = files.get(prec)
                    if path and Path(path).is_file():
                        got.setdefault(label, []).append(profile_onnx(path, b, iters.get(str(b), 50), threads,
                                                                      keep_nodes=prec == "fp32"))
            for label, profs in got.items():
                profs = [q for q in profs if q]
                if profs:
                    pick = sorted(profs, key=lambda q: q["model_run_us"])[len(profs) // 2]
                    pick["rounds_model_run_us"] = [q["model_run_us"] for q in profs]
                    out.setdefault(label, {}).setdefault(prec, {})[str(b)] = pick
    return out
