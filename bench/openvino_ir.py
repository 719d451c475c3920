"""Does OpenVINO IR (``.xml`` + ``.bin``) serve a user better than the ONNX file? (issue #36, deliverable 2)

    python -m bench.openvino_ir --run RUN_DIR [--threads 2] [--rounds 15] [--out bench/results/<date>-vm-openvino-ir.json]

For the FP32 (``model.sim.onnx``) and U8S8 INT8 (``model.int8.cpu.onnx``) files of a finished run: the IR written
by ``openvino.save_model(openvino.convert_model(file), compress_to_fp16=False)``, its size (and how far
``save_model``'s default, float weights stored as FP16, moves the logits), the time to read + compile each form for the CPU
(median of fresh ``Core`` sessions), and the two compiled models timed against each other at batch 1 and 32
(interleaved rounds, :func:`export.edge.timing.paired_ratio`: ONNX ms / IR ms, > 1 means the IR runs faster) with
the largest |Δ logit| between them. OpenVINO is told to run FP32 files in f32, as the pipeline's sessions do.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ccpcsa.io.artifacts import atomic_write_json
from pipeline.artifacts import MODEL_INT8_CPU_ONNX, MODEL_SIM_ONNX

from .common import machine_info

FILES = {"fp32": MODEL_SIM_ONNX, "int8": MODEL_INT8_CPU_ONNX}


def _compile(path: Path, batch: int, threads: int) -> tuple[Any, float]:
    """``path`` read and compiled for the CPU at a static batch, in a fresh ``Core``; (compiled model, seconds)."""
    import openvino as ov

    t0 = time.perf_counter()
    core = ov.Core()
    model = core.read_model(str(path))
    shape = list(model.inputs[0].get_partial_shape().get_min_shape())
    model.reshape({model.inputs[0]: [batch, *shape[1:]]})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    return compiled, time.perf_counter() - t0


def compare(onnx_path: Path, work: Path, *, threads: int, rounds: int, batches: list[int]) -> dict[str, Any]:
    """The IR of ``onnx_path`` against the ONNX file itself: sizes, read + compile seconds, paired speed, |Δ logit|."""
    import openvino as ov

    from export.edge.timing import calls_for_seconds, interleaved_rounds, paired_ratio, round_medians

    t0 = time.perf_counter()
    xml, half = work / (onnx_path.stem + ".xml"), work / (onnx_path.stem + ".fp16.xml")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    out: dict[str, Any] = {"convert_s": time.perf_counter() - t0, "onnx_bytes": onnx_path.stat().st_size,
                           "ir_bytes": xml.stat().st_size + xml.with_suffix(".bin").stat().st_size}
    # save_model's default stores float weights in FP16: smaller, but not the same model
    ov.save_model(ov.convert_model(str(onnx_path)), str(half))
    x1 = np.random.default_rng(0).standard_normal((32, 3, 32, 32), dtype=np.float32)
    (m_onnx, _), (m_half, _) = _compile(onnx_path, 32, threads), _compile(half, 32, threads)
    lo, lh = np.asarray(m_onnx(x1)[0]), np.asarray(m_half(x1)[0])
    out["default_fp16_ir"] = {"bytes": half.stat().st_size + half.with_suffix(".bin").stat().st_size,
                              "max_abs_logit_diff": float(np.abs(lo - lh).max()),
                              "top1_agreement_pct": float(100 * (lo.argmax(1) == lh.argmax(1)).mean())}
    for name, path in (("onnx", onnx_path), ("ir", xml)):
        out[f"{name}_compile_s"] = statistics.median(_compile(path, 1, threads)[1] for _ in range(5))
    for b in batches:
        (a, _), (c, _) = _compile(onnx_path, b, threads), _compile(xml, b, threads)
        x = np.random.default_rng(0).standard_normal((b, 3, 32, 32), dtype=np.float32)
        diff = float(np.abs(np.asarray(a(x)[0]) - np.asarray(c(x)[0])).max())
        calls = [lambda m=a, x=x: m(x), lambda m=c, x=x: m(x)]
        n = max(3, calls_for_seconds(calls[0], 0.03))
        samples = interleaved_rounds(calls, rounds=rounds, per_round=[n, n], warmup=3)
        ratio, se = paired_ratio(samples[0], samples[1])
        out[str(b)] = {"onnx_ms": round_medians(samples[0]), "ir_ms": round_medians(samples[1]), "onnx_over_ir": ratio,
                       "se": se, "max_abs_logit_diff": diff}
    return out


def main(argv: list[str] | None = None) -> int:
    """Compare both files of ``--run``; write the results JSON; print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished run directory (model.sim.onnx, model.int8.cpu.onnx)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--out", default=f"bench/results/{time.strftime('%Y-%m-%d')}-vm-openvino-ir.json")
    a = ap.parse_args(argv)
    run = Path(a.run)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        for prec, name in FILES.items():
            if not (run / name).is_file():
                raise SystemExit(f"error: {run / name} does not exist; give a finished run with --run")
            rows[prec] = compare(run / name, Path(work), threads=a.threads, rounds=a.rounds, batches=a.batches)
            r = rows[prec]
            print(f"{prec}: ONNX {r['onnx_bytes']} B, IR {r['ir_bytes']} B; read+compile ONNX {1000 * r['onnx_compile_s']:.1f} ms, "
                  f"IR {1000 * r['ir_compile_s']:.1f} ms; " + "; ".join(
                      f"b{b} ONNX/IR {r[str(b)]['onnx_over_ir']:.3f} ± {r[str(b)]['se']:.3f} (|Δ| {r[str(b)]['max_abs_logit_diff']:.1e})"
                      for b in a.batches), flush=True)
    atomic_write_json(a.out, {"command": "python -m bench.openvino_ir --run " + a.run, "machine": machine_info(),
                              "date": time.strftime("%Y-%m-%d"), "threads": a.threads, "rows": rows})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
