"""``python -m bench.qdq_placement``: Q/DQ placement and accuracy of the TensorRT INT8 flavour vs NVIDIA ModelOpt.

For a trained CIFAR-10 checkpoint (default the resnet20 baseline in ``../shared/models``) it writes the FP32 ONNX
(exported + simplified like the pipeline) and these INT8 QDQ files, all calibrated on the same 512 train images:

* ``modelopt``: ``modelopt.onnx.quantization.quantize`` (int8, its default entropy calibration, FP32 high
  precision so it runs on the CPU as is) — skipped, with the reason printed, when ModelOpt is not installed
  (it is not a project dependency: ``pip install --no-deps nvidia-modelopt onnx_graphsurgeon nvidia-ml-py
  onnxslim onnxscript onnx_ir lief`` into the venv for the comparison);
* ``old_trt``: the TensorRT flavour as ``export.quantize`` made it before the TensorRT placement
  (onnxruntime's default QDQ placement, S8S8 symmetric, per-channel, MinMax);
* ``new_trt``: :func:`export.quantize.quantize_int8` now (``export.qdq_placement``), the pipeline's default MinMax
  calibration (onnxruntime 1.31's ``entropy`` gives the very same scales here: its histogram calibrator, which
  ModelOpt patches, keeps the full range), and ``new_trt_modelopt_scales``: the same file with ModelOpt's
  activation scales copied in by tensor name — placement and calibration effects apart;
* ``cpu_flavour``: the onnxruntime-CPU flavour (``activations="uint8"``), counts only.

For each: Q/DQ counts, placement by consumer op and input (:func:`export.qdq_placement.qdq_placement`), the
activation edges that differ from ModelOpt's, and top-1 accuracy on the test images with onnxruntime CPU (full
optimization: its integer kernels), onnxruntime with graph optimization off (Q/DQ in float: what TensorRT computes)
and OpenVINO CPU. Results go to ``bench/results/<date>-<host>-qdq-placement.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ccpcsa.errors import first_line

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT.parent / "shared/models/resnet20_cifar10.pt"
DATA = "imagefolder:" + str(ROOT.parent / "shared/data/cifar10-jpg.tar.gz")


def qdq_counts(path: Path) -> dict[str, Any]:
    """Q and DQ node counts, placement by consumer (:func:`export.qdq_placement.qdq_placement`), opset domains."""
    from export.qdq_placement import qdq_placement

    m = onnx.load(str(path))
    ops = Counter(n.op_type for n in m.graph.node)
    return {"Q": ops["QuantizeLinear"], "DQ": ops["DequantizeLinear"], "placement": qdq_placement(m),
            "opset_domains": [o.domain or "ai.onnx" for o in m.opset_import]}


def activation_edges(path: Path) -> set[str]:
    """``"<consumer node name>[<input index>]"`` for each activation input fed by a DequantizeLinear."""
    m = onnx.load(str(path))
    inits = {i.name for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    dq_act = set()
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear":
            q = producer.get(n.input[0])
            if n.input[0] not in inits and not (q is not None and q.input[0] in inits):
                dq_act.add(n.output[0])
    return {f"{n.name}[{i}]" for n in m.graph.node for i, x in enumerate(n.input) if x in dq_act}


def with_scales_of(path: Path, donor: Path, dest: Path) -> Path:
    """``path`` with the scale of each activation QuantizeLinear (and its DequantizeLinear) replaced by ``donor``'s
    scale for the same tensor name (weights keep theirs: both are per-channel max/127); written to ``dest``."""
    m, d = onnx.load(str(path)), onnx.load(str(donor))
    d_inits = {i.name: i for i in d.graph.initializer}
    donor_scale = {n.input[0]: onnx.numpy_helper.to_array(d_inits[n.input[1]]) for n in d.graph.node
                   if n.op_type == "QuantizeLinear" and n.input[0] not in d_inits}
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in donor_scale and n.input[1] in inits:
            inits[n.input[1]].CopyFrom(onnx.numpy_helper.from_array(
                donor_scale[n.input[0]].astype(np.float32).reshape(onnx.numpy_helper.to_array(inits[n.input[1]]).shape),
                n.input[1]))
    onnx.save(m, str(dest))
    return dest


def old_tensorrt_flavour(src: Path, dest: Path, calib: np.ndarray) -> None:
    """The TensorRT flavour before ``export.qdq_placement``: onnxruntime's default QDQ placement with the settings
    ``export.quantize`` used (signed symmetric activations and weights, per-channel, float biases, MinMax)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from export.quantize import NumpyCalibrationReader

    pre = dest.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(pre), str(dest), NumpyCalibrationReader(calib, "input"), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})


def modelopt_quantize(src: Path, dest: Path, calib: np.ndarray) -> str | None:
    """Quantize with ModelOpt's ONNX PTQ (int8, default calibration) in a child process — ModelOpt patches
    onnxruntime's quantizer registry process-wide — and return None, or why it could not run."""
    import subprocess

    np.save(dest.with_suffix(".calib.npy"), calib)
    code = ("import sys, numpy as np; from bench.qdq_placement import _modelopt_in_process as f; "
            "print('SKIP:' + (f(sys.argv[1], sys.argv[2], np.load(sys.argv[3])) or ''))")
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(dest), str(dest.with_suffix(".calib.npy"))],
                          capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SKIP:")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"ModelOpt process failed (exit {proc.returncode}): {tail}"
    return lines[-1][5:] or None


def _modelopt_in_process(src: str, dest: str, calib: np.ndarray) -> str | None:
    try:
        import modelopt.onnx.trt_utils as trt_utils
        from modelopt.onnx.quantization import quantize
    except Exception as exc:  # ImportError, or a dependency failing at import
        return f"modelopt.onnx.quantization not importable ({first_line(exc, with_type=True)})"
    try:
        import tensorrt

        if not hasattr(tensorrt, "Logger"):  # only the tensorrt *stubs* are installed: a namespace package
            trt_utils.TRT_PYTHON_AVAILABLE = False
    except ImportError:
        pass
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize(src, quantize_mode="int8", calibration_data=calib, calibration_eps=["cpu"],
                     output_path=dest, high_precision_dtype="fp32", log_level="ERROR")
    except Exception as exc:
        return f"ModelOpt quantization failed ({first_line(exc, with_type=True)})"
    return None


def accuracies(path: Path, x: np.ndarray, y: np.ndarray, threads: int) -> dict[str, Any]:
    """Top-1 accuracy (%) on onnxruntime CPU (full optimization), onnxruntime without graph optimization and
    OpenVINO CPU, with each pass's seconds."""
    import openvino as ov

    from export.compare import run_batched
    from export.runtime import OrtRunner

    out: dict[str, Any] = {}
    for key, opt in (("ort_cpu", True), ("ort_noopt", False)):
        t = time.perf_counter()
        logits = run_batched(OrtRunner(path, threads=threads, graph_optimization=opt), x, 500)
        out[key] = round(100.0 * float((logits.argmax(1) == y).mean()), 2)
        out[f"{key}_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
    logits = np.concatenate([compiled(x[i : i + 500])[0] for i in range(0, len(x), 500)])
    out["openvino_cpu"] = round(100.0 * float((logits.argmax(1) == y).mean()), 2)
    out["openvino_cpu_s"] = round(time.perf_counter() - t, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write the results JSON; prints one line per file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(CHECKPOINT))
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--images", type=int, default=10_000, help="test images to evaluate (seeded sample; all: 10000)")
    ap.add_argument("--calibration", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/<date>-<host>-qdq-placement.json)")
    args = ap.parse_args(argv)

    from bench.common import machine_info, results_stem
    from ccpcsa.data import load_data, normalize_batch
    from ccpcsa.io.checkpoint import load_checkpoint
    from export.metadata import DeployMetadata
    from export.onnx_export import export_onnx
    from export.quantize import int8_saturates, quantize_int8
    from export.simplify import simplify_onnx

    ck = load_checkpoint(args.checkpoint)
    data = load_data(args.data, progress=False)
    rng = np.random.default_rng(0)
    cal = normalize_batch(data.train.images[rng.permutation(len(data.train.labels))[: args.calibration]], ck.mean,
                          ck.std).numpy()
    test = data.test.sample(args.images, seed=0) if args.images < len(data.test.labels) else data.test
    x, y = normalize_batch(test.images, ck.mean, ck.std).numpy(), np.asarray(test.labels)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="qdq-placement-") as tmp:
        work = Path(tmp)
        md = DeployMetadata(class_names=[str(i) for i in range(len(ck.classes))], mean=(0, 0, 0), std=(1, 1, 1),
                            input_size=32)
        raw = export_onnx(ck.model, work / "fp32.onnx", md).path
        fp32 = simplify_onnx(raw, work / "fp32.sim.onnx").path
        rows["fp32"] = {"accuracy": accuracies(fp32, x, y, args.threads)}
        print("fp32", json.dumps(rows["fp32"]), flush=True)
        files: dict[str, Path] = {}
        why = modelopt_quantize(fp32, work / "modelopt.onnx", cal)
        if why is None:
            files["modelopt"] = work / "modelopt.onnx"
        else:
            rows["modelopt"] = {"skipped": why}
            print(f"modelopt: skipped — {why}", flush=True)
        old_tensorrt_flavour(fp32, work / "old_trt.onnx", cal)
        files["old_trt"] = work / "old_trt.onnx"
        files["new_trt"] = quantize_int8(fp32, work / "new.onnx", cal).path
        if "modelopt" in files:
            files["new_trt_modelopt_scales"] = with_scales_of(files["new_trt"], files["modelopt"],
                                                              work / "new_mo_scales.onnx")
        cpu = quantize_int8(fp32, work / "cpu.onnx", cal, activations="uint8")
        rows["cpu_flavour"] = {**qdq_counts(cpu.path), "op_counts": cpu.op_counts,
                               "note": "activations=uint8, reduce_range=False; placement unchanged by this work"}
        ref = activation_edges(files["modelopt"]) if "modelopt" in files else None
        for name, path in files.items():
            row: dict[str, Any] = qdq_counts(path)
            if ref is not None:
                edges = activation_edges(path)
                row["activation_edges_vs_modelopt"] = {"only_here": sorted(edges - ref), "only_modelopt": sorted(ref - edges)}
            row["accuracy"] = accuracies(path, x, y, args.threads)
            rows[name] = row
            print(name, json.dumps({k: row[k] for k in ("Q", "DQ", "accuracy")}), flush=True)

    info = machine_info()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m bench.qdq_placement " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info,
        "int8_saturates": int8_saturates()[1],
        "checkpoint": str(Path(args.checkpoint).name),
        "test_images": len(y),
        "calibration_images": len(cal),
        "accuracy_keys": {"ort_cpu": "onnxruntime CPU, full graph optimization (fused integer kernels)",
                          "ort_noopt": "onnxruntime CPU, graph optimization off (Q/DQ evaluated in float, as TensorRT)",
                          "openvino_cpu": "OpenVINO CPU, INFERENCE_NUM_THREADS=threads"},
        "results": rows,
    }
    out = Path(args.out) if args.out else ROOT / "bench/results" / f"{results_stem(False, host=info['host'])}-qdq-placement.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
