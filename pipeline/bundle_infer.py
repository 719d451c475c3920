#!/usr/bin/env python3
"""Standalone edge inference: classify image files with the bundled ONNX model and print latency.

    python infer.py IMAGE [IMAGE ...] [--model model.sim.onnx | model.int8.cpu.onnx | model.int8.onnx] [--engine model.engine] [--threads N]

Needs only numpy, pillow and onnxruntime (TensorRT + pycuda only for --engine). Preprocessing comes
from labels.json beside this file (written from the model's ONNX metadata): resize to the input size,
RGB, x = (pixel/255 − mean) / std, NCHW.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def preprocess(paths: list[str], meta: dict) -> np.ndarray:
    h, w = meta["input_size"]
    mean = np.asarray(meta["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(meta["std"], dtype=np.float32)[:, None, None]
    out = []
    for p in paths:
        img = Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        if meta.get("channel_order", "RGB") == "BGR":
            x = x[::-1]
        out.append((x - mean) / std)
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def run_onnx(model: Path, x: np.ndarray, threads: int) -> tuple[np.ndarray, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})  # warm-up
    t0 = time.perf_counter()
    logits = sess.run(None, {name: x})[0]
    return logits, (time.perf_counter() - t0) * 1000


def run_engine(engine: Path, x: np.ndarray) -> tuple[np.ndarray, float]:
    import pycuda.autoinit  # noqa: F401
    import pycuda.driver as cuda
    import tensorrt as trt

    rt = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    eng = rt.deserialize_cuda_engine(engine.read_bytes())
    ctx = eng.create_execution_context()
    names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
    inp = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT][0]
    outn = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT][0]
    ctx.set_input_shape(inp, x.shape)
    out = np.empty(tuple(ctx.get_tensor_shape(outn)), dtype=np.float32)
    d_in, d_out = cuda.mem_alloc(x.nbytes), cuda.mem_alloc(out.nbytes)
    stream = cuda.Stream()
    ctx.set_tensor_address(inp, int(d_in))
    ctx.set_tensor_address(outn, int(d_out))
    t0 = time.perf_counter()
    cuda.memcpy_htod_async(d_in, x, stream)
    ctx.execute_async_v3(stream.handle)
    cuda.memcpy_dtoh_async(out, d_out, stream)
    stream.synchronize()
    return out, (time.perf_counter() - t0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--model", default=None, help="ONNX file (default: the simplified FP32 model)")
    ap.add_argument("--engine", default=None, help="TensorRT engine built with build_engine.sh")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=3)
    a = ap.parse_args()
    meta = json.loads((HERE / "labels.json").read_text())
    missing = [p for p in a.images if not Path(p).is_file()]
    if missing:
        print(f"error: image file {missing[0]} does not exist", file=sys.stderr)
        return 2
    x = preprocess(a.images, meta)
    if a.engine:
        logits, ms = run_engine(Path(a.engine), x)
        used = a.engine
    else:
        model = Path(a.model) if a.model else HERE / meta["default_model"]
        logits, ms = run_onnx(model, x, a.threads)
        used = model.name
    e = np.exp(logits - logits.max(1, keepdims=True))
    prob = e / e.sum(1, keepdims=True)
    for path, p in zip(a.images, prob, strict=True):
        top = np.argsort(-p)[: a.top]
        print(f"{path}: " + ", ".join(f"{meta['classes'][i]} {100 * p[i]:.1f}%" for i in top))
    print(f"latency: {ms:.2f} ms for {len(x)} image(s) with {used}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
