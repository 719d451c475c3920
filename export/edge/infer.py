#!/usr/bin/env python3
"""Classify image files with a bundled model on any runtime, and print its warmed latency.

    python infer.py IMAGE [IMAGE ...] [--runtime onnxruntime-cpu|openvino-cpu|tensorrt] [--model FILE] [--threads N]

Standalone (numpy, pillow and the runtime only; the bundle ships it beside ``sessions.py`` and ``labels.json``).
``--model`` is a path, or the name of a file of the bundle folder (``model.sim.onnx``, ``model.int8.cpu.onnx`` —
the CPU INT8 flavour —, ``model.int8.onnx`` — the TensorRT INT8 flavour, build it into ``model.int8.engine`` with
``build_engine.sh`` —, ``model.fp16.engine``); the default is the FP32 model (``model.fp16.engine`` for TensorRT).
Preprocessing comes from ``labels.json``: resize to the input size, RGB, ``x = (pixel/255 − mean) / std``, NCHW.
Latency: the median (p50) of ``--iters`` timed calls on the whole batch, after warm-up calls. A mistake (missing file,
runtime not installed, unreadable image) prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

try:
    from .sessions import RUNTIMES, EdgeError, Session, family, installed, open_session, read_json
except ImportError:  # flat in the bundle folder
    from sessions import RUNTIMES, EdgeError, Session, family, installed, open_session, read_json  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
LABELS_FILE = "labels.json"  #: the bundle's classes and preprocessing (``pipeline.artifacts.LABELS``)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: <message>; see --help`` and exit 2."""
        print(f"error: {' '.join(message.split())}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def load_labels(folder: Path = HERE) -> dict[str, Any]:
    """``labels.json`` of the bundle folder: classes, input size, mean/std, channel order, default model."""
    path = folder / LABELS_FILE
    meta = read_json(path, "run this script from an unpacked bundle")
    missing = [k for k in ("classes", "input_size", "mean", "std") if k not in meta]
    if missing:
        raise EdgeError(f"{path} lacks {', '.join(missing)}; unpack the bundle again")
    return meta


def resolve_model(name: str, folder: Path = HERE) -> Path:
    """``name`` as a path when that file exists, else the file of that name in the bundle folder."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    if (folder / p.name).is_file() and not p.is_absolute():
        return folder / p.name
    have = sorted(f.name for f in folder.iterdir() if f.suffix in (".onnx", ".engine", ".xml"))
    hint = " (TensorRT engines are built on the device: bash build_engine.sh)" if p.suffix == ".engine" else ""
    raise EdgeError(f"model file '{name}' not found here nor in {folder}{hint}; the bundle has: {', '.join(have) or 'none'}")


def load_image(path: str | Path, meta: dict[str, Any]) -> np.ndarray:
    """One image file → float32 CHW, preprocessed as ``labels.json`` says (EdgeError when pillow cannot read it)."""
    from PIL import Image, UnidentifiedImageError

    h, w = (int(v) for v in meta["input_size"])
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except FileNotFoundError as exc:
        raise EdgeError(f"image file '{path}' does not exist") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise EdgeError(f"cannot read image '{path}' ({type(exc).__name__}); give a jpg/png/… image file") from exc
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    if meta.get("channel_order", "RGB") == "BGR":
        x = x[::-1]
    mean = np.asarray(meta["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(meta["std"], dtype=np.float32)[:, None, None]
    return (x - mean) / std


def preprocess(paths: list[str] | list[Path], meta: dict[str, Any]) -> np.ndarray:
    """Image files → one float32 NCHW batch (:func:`load_image` each)."""
    return np.ascontiguousarray(np.stack([load_image(p, meta) for p in paths]), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` (N, classes)."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def latency(session: Session, x: np.ndarray, *, iters: int = 20, warmup: int = 3) -> dict[str, float]:
    """``{"p50", "p95", "mean"}`` ms of ``session.run(x)``: ``warmup`` untimed calls, then ``iters`` timed ones."""
    for _ in range(warmup):
        session.run(x)
    ms = []
    for _ in range(max(1, iters)):
        t0 = time.perf_counter_ns()
        session.run(x)
        ms.append((time.perf_counter_ns() - t0) / 1e6)
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "mean": float(a.mean())}


def default_model(runtime: str, meta: dict[str, Any]) -> str:
    """The model ``infer.py`` opens without ``--model``: the FP16 engine on TensorRT, else the FP32 ONNX file."""
    return "model.fp16.engine" if runtime == "tensorrt" else str(meta.get("default_model", "model.sim.onnx"))


def main(argv: list[str] | None = None) -> int:
    """Command line (module doc); returns the exit status."""
    ap = OneLineParser(prog="infer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files (jpg, png, …)")
    ap.add_argument("--runtime", default="onnxruntime-cpu", help=f"one of {', '.join(RUNTIMES)} (default onnxruntime-cpu)")
    ap.add_argument("--model", default=None, help="model file: a path or a file name of the bundle folder")
    ap.add_argument("--engine", default=None, help="TensorRT engine (same as --runtime tensorrt --model ENGINE)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--iters", type=int, default=20, help="timed calls for the latency (default 20)")
    ap.add_argument("--top", type=int, default=3)
    a = ap.parse_args(argv)
    try:
        runtime = "tensorrt" if a.engine else a.runtime
        meta = load_labels(HERE)
        if not installed(runtime):
            raise EdgeError(f"runtime '{runtime}' is not installed here; pip install -r requirements-{family(runtime)}.txt")
        model = resolve_model(a.engine or a.model or default_model(runtime, meta), HERE)
        x = preprocess(a.images, meta)
        sess = open_session(runtime, model, threads=a.threads)
        logits = sess.run(x)
        lat = latency(sess, x, iters=a.iters)
        sess.close()
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    classes = meta["classes"]
    for path, p in zip(a.images, softmax(logits), strict=True):
        top = np.argsort(-p)[: a.top]
        print(f"{path}: " + ", ".join(f"{classes[i] if i < len(classes) else i} {100 * p[i]:.1f}%" for i in top))
    print(f"latency: p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms for {len(x)} image(s) ({a.iters} timed calls after "
          f"warm-up) with {model.name} on {runtime}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
