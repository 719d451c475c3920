"""Benchmark: latency and accuracy of one model across formats, unpruned vs pruned.

    python -m bench.export_latency --model resnet56 [--checkpoint BASE.pt] [--pruned PRUNED.pt | --prune-flops 0.5]
                                   [--threads 2] [--batches 1 32] [--eval-images 10000] [--out results.json]

Formats: PyTorch eager, onnxruntime FP32 (simplified ONNX) and INT8 (QDQ), for the unpruned model and
a pruned one (from ``--pruned``, or l1-pruned to ``--prune-flops`` when none is given — latency does
not depend on the weights, accuracy does, so accuracy is reported only for trained checkpoints).
One harness (``export.latency.measure_latency``) for every runner; thread count fixed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from bench.common import export_formats
from ccpcsa.criteria import ScoreContext, get_criterion
from ccpcsa.data import load_data, normalize_batch
from ccpcsa.io.checkpoint import load_checkpoint
from ccpcsa.models import build_model, count_complexity
from ccpcsa.surgery.macs_target import prune_to_target
from ccpcsa.surgery.prune import ChannelPruner
from export.compare import run_batched
from export.latency import measure_latency
from export.metadata import DeployMetadata
from export.runtime import OrtRunner, TorchRunner


def _formats(model: torch.nn.Module, tag: str, work: Path, meta: DeployMetadata, calib: np.ndarray, threads: int,
             batches: list[int], x: np.ndarray | None, y: np.ndarray | None, iters: int) -> list[dict[str, Any]]:
    files = export_formats(model, work, tag, meta, calib, int8=("int8",))
    sim_p, int8_p = files["fp32"], files["int8"]
    c = count_complexity(model)
    rows = []
    for fmt, runner in (("pytorch", TorchRunner(model, threads=threads)), ("onnx_fp32", OrtRunner(sim_p, threads=threads)),
                        ("onnx_int8", OrtRunner(int8_p, threads=threads))):
        rep = measure_latency(runner, batch_sizes=batches, iters=iters, max_seconds=20.0)
        row = {"model": tag, "format": fmt, "macs": c.macs, "params": c.params,
               "latency_ms": {str(r.batch_size): {"p50": round(r.p50_ms, 4), "p95": round(r.p95_ms, 4)} for r in rep.results},
               "images_per_s": {str(r.batch_size): round(r.images_per_s, 1) for r in rep.results},
               "size_bytes": (int8_p if fmt == "onnx_int8" else sim_p).stat().st_size}
        if x is not None and y is not None:
            row["accuracy"] = round(float(100 * (run_batched(runner, x, 250).argmax(1) == y).mean()), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--checkpoint", default=None, help="trained unpruned checkpoint (else random weights, no accuracy)")
    ap.add_argument("--pruned", default=None, help="trained pruned checkpoint")
    ap.add_argument("--prune-flops", type=float, default=0.5, help="l1-prune to this FLOPs reduction when --pruned is absent")
    ap.add_argument("--data", default="imagefolder:../shared/data/cifar10-jpg.tar.gz")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--eval-images", type=int, default=10000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = load_data(a.data, progress=False)
    meta = DeployMetadata(class_names=data.classes, mean=data.mean, std=data.std, input_size=32, run_id="bench")
    calib = normalize_batch(data.train.sample(512, seed=0).images, data.mean, data.std).numpy()
    trained = a.checkpoint is not None
    base = load_checkpoint(a.checkpoint).model if trained else build_model(a.model, len(data.classes))
    if a.pruned:
        pruned = load_checkpoint(a.pruned).model
    else:
        import copy

        pruned = copy.deepcopy(base)
        p = ChannelPruner(pruned, 32)
        scores = get_criterion("l1").score(ScoreContext(pruned, p))
        prune_to_target(p, scores, target_macs=(1 - a.prune_flops) * count_complexity(base).macs)
    x = y = None
    if trained or a.pruned:
        test = data.test.sample(a.eval_images)
        x = normalize_batch(test.images, data.mean, data.std).numpy()
        y = test.labels
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        for tag, m in (("unpruned", base), ("pruned", pruned)):
            rows += _formats(m.eval(), tag, Path(d), meta, calib, a.threads, a.batches,
                             x if (tag == "unpruned" and trained) or (tag == "pruned" and (a.pruned or trained)) else None, y, a.iters)
    result = {"date": time.strftime("%Y-%m-%d"), "command": "python -m bench.export_latency " + " ".join(os.sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "onnxruntime": onnxruntime.__version__}, "model": a.model, "threads": a.threads, "rows": rows}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
