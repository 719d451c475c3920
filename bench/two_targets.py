"""Two targets, one deploy made for each, each timed on both (issue #36, deliverable 5).

    python -m bench.two_targets --made-for RUN_A RUNTIME:THREADS:PRECISION --made-for RUN_B RUNTIME:THREADS:PRECISION
                                [--batches 1 32] [--rounds 21] [--out bench/results/<date>-vm-two-targets.json]

``RUN_A`` / ``RUN_B``: finished run directories of the same unpruned model, each made for its target (e.g. ``--set
target.profile=ort2.json --set prune.steps.allocation=latency`` and ``--set target.profile=ov1.json --set
target.precision=int8 …``). On each target (runtime, threads, precision: ``fp32`` times ``model.sim.onnx``, ``int8``
``model.int8.cpu.onnx``) the unpruned reference and both pruned files run in one interleaved timer
(:func:`export.edge.timing.interleaved_rounds`, fresh sessions, onnxruntime spinning off), so per round: each run's
speedup over the unpruned model, and the run made for the target against the other run's model (``own_vs_other`` =
other ms / own ms: ≥ 1 within its SE means the run made for this target is at least as fast here). Accuracy: each
run's ``validation.json`` row of that file on that runtime (all test images, ± SE). Prediction: the speedup the
profile-driven prune stage estimated for its own target vs the speedup measured here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ccpcsa.errors import UserError
from ccpcsa.io.artifacts import atomic_write_json
from pipeline.artifacts import (
    BASELINE_INT8_CPU_ONNX,
    BASELINE_SIM_ONNX,
    MANIFEST,
    MODEL_INT8_CPU_ONNX,
    MODEL_SIM_ONNX,
    VALIDATION,
)

from .common import machine_info

FILES = {"fp32": (MODEL_SIM_ONNX, BASELINE_SIM_ONNX), "int8": (MODEL_INT8_CPU_ONNX, BASELINE_INT8_CPU_ONNX)}


def parse_target(text: str) -> tuple[str, int, str]:
    """``RUNTIME:THREADS:PRECISION`` → its parts; one line naming the fix otherwise."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in FILES:
        raise UserError(f"target '{text}': give RUNTIME:THREADS:PRECISION, e.g. openvino-cpu:1:int8 (precision fp32 or int8)")
    return parts[0], int(parts[1]), parts[2]


def time_target(runtime: str, threads: int, precision: str, runs: dict[str, Path], *, batches: list[int],
                rounds: int) -> dict[str, Any]:
    """On one target: ``{batch: {unpruned_ms, other_load, <run>: {ms, speedup, speedup_se}, own_vs_other: {ratio,
    se}}}`` — the unpruned reference (the first run's) and each run's file, interleaved; ratios per round
    (:func:`paired_ratio`); ``runs``: the run made for this target first, the other second."""
    from export.edge.sessions import open_session
    from export.edge.timing import (
        OtherLoad,
        calls_for_seconds,
        interleaved_rounds,
        paired_ratio,
        round_medians,
    )

    names = list(runs)
    model_file, ref_file = FILES[precision]
    files = [runs[names[0]] / ref_file, *(runs[n] / model_file for n in names)]
    sessions = [open_session(runtime, f, threads=threads, spinning=False) for f in files]
    out: dict[str, Any] = {"files": {"unpruned": str(files[0]), **{n: str(f) for n, f in zip(names, files[1:], strict=True)}}}
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, 32, 32), dtype=np.float32)
        calls = [lambda s=s, x=x: s.run(x) for s in sessions]
        n = calls_for_seconds(calls[0], 0.03)
        with OtherLoad() as load:
            samples = interleaved_rounds(calls, rounds=rounds, per_round=[max(3, n)] * len(calls), warmup=3)
        row: dict[str, Any] = {"unpruned_ms": round_medians(samples[0]), "other_load": load.share}
        for i, name in enumerate(names, start=1):
            sp, se = paired_ratio(samples[0], samples[i])
            row[name] = {"ms": round_medians(samples[i]), "speedup": sp, "speedup_se": se}
        own, se = paired_ratio(samples[2], samples[1])  # the other run's ms over the own run's, per round
        row["own_vs_other"] = {"ratio": own, "se": se}
        out[str(b)] = row
    return out


def accuracy(run: Path, runtime: str, precision: str) -> dict[str, Any]:
    """The run's validated accuracy (± SE, images) of the target's file on ``runtime``."""
    rows = json.loads((run / VALIDATION).read_text())["formats"]
    name = "onnx_simplified" if precision == "fp32" else "int8_cpu"
    row = rows.get(name if runtime == "onnxruntime-cpu" else f"{name}@{runtime}") or {}
    return {"accuracy": row.get("accuracy"), "accuracy_se": row.get("accuracy_se"), "images": row.get("accuracy_n")}


def predicted(run: Path) -> dict[str, Any]:
    """What the run's prune stage estimated for its own target (``prune`` metrics' latency record)."""
    m = json.loads((run / MANIFEST).read_text())["stages"]["prune"]["metrics"]
    lat = m.get("latency") or {}
    return {"final_speedup_estimate": lat.get("final_speedup"), "batch": lat.get("batch"), "target": m.get("target"),
            "flops_reduction": m.get("flops_reduction"), "channels": (m.get("history") or [{}])[-1].get("channels")}


def main(argv: list[str] | None = None) -> int:
    """Time both runs on both targets; write the results JSON; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--made-for", nargs=2, action="append", metavar=("RUN_DIR", "TARGET"), required=True)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--out", default=f"bench/results/{time.strftime('%Y-%m-%d')}-vm-two-targets.json")
    a = ap.parse_args(argv)
    if len(a.made_for) != 2:
        raise SystemExit("error: give --made-for twice (one run per target)")
    runs = {f"run{i}": Path(d) for i, (d, _) in enumerate(a.made_for)}
    targets = {f"run{i}": parse_target(t) for i, (_, t) in enumerate(a.made_for)}
    for d in runs.values():
        if not (d / VALIDATION).is_file():
            raise SystemExit(f"error: {d} has no validation.json; finish that run first")
    rows = []
    for owner, (runtime, threads, precision) in targets.items():
        other = next(n for n in runs if n != owner)
        t = time_target(runtime, threads, precision, {owner: runs[owner], other: runs[other]}, batches=a.batches, rounds=a.rounds)
        acc = {n: accuracy(runs[n], runtime, precision) for n in (owner, other)}
        rows.append({"target": {"runtime": runtime, "threads": threads, "precision": precision}, "made_for_it": owner,
                     "other": other, "timing": t, "accuracy": acc})
        for b in a.batches:
            r = t[str(b)]
            print(f"{runtime} {threads}t {precision} b{b}: made for it {r[owner]['speedup']:.2f}x ± {r[owner]['speedup_se']:.2f}, "
                  f"other {r[other]['speedup']:.2f}x ± {r[other]['speedup_se']:.2f}; own vs other "
                  f"{r['own_vs_other']['ratio']:.3f} ± {r['own_vs_other']['se']:.3f}; acc {acc[owner]['accuracy']} vs {acc[other]['accuracy']}",
                  flush=True)
    record = {"command": "python -m bench.two_targets " + " ".join(f"--made-for {d} {t}" for d, t in a.made_for),
              "machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "runs": {n: str(d) for n, d in runs.items()},
              "predicted": {n: predicted(d) for n, d in runs.items()}, "rows": rows}
    atomic_write_json(a.out, record)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
