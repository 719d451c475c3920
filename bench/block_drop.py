"""Which residual block costs least to remove (``prune.depth.drop_blocks``): a cheap probe of a trained model.

    python -m bench.block_drop --checkpoint ../shared/models/resnet20_cifar10.pt [--data SPEC] [--recalibrate 1024]
                               [--latency] [--threads 2] [--out results.json]
                               [--variants layer1.1@0.4 layer1.1+layer1.0@0.5 … [--round-to 16]]

For every candidate block (:func:`ccpcsa.models.depth.candidate_blocks`), alone: remove it, re-estimate BatchNorm on
``--recalibrate`` train images, and measure the val accuracy (5,000 held-out train images) and the MACs it takes. With
``--latency`` also the measured onnxruntime-CPU speedup of the model without it over the model with it, FP32 and INT8
U8S8 at batch 1 and 32 (paired, ± SE; ``export.latency.runtime_speedups``). No fine-tuning: the numbers rank blocks, a
fine-tune recovers most of the loss (bench/README.md "Depth").

``--variants BLOCKS@TOTAL``: timing only (no accuracy), for shapes a deploy would produce — the blocks (``+``-joined,
may be empty) removed, then l1-ranked channels pruned one-shot in ``--round-to`` blocks until the MACs are ``TOTAL``
under the unpruned model's; each timed like ``--latency``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    """Probe every candidate block of the checkpoint; print a table and one JSON line (``--out``: write it too)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default="imagefolder:../shared/data/cifar10-jpg.tar.gz")
    ap.add_argument("--recalibrate", type=int, default=1024, help="train images for the BatchNorm re-estimate (0: off)")
    ap.add_argument("--latency", action="store_true", help="also time each removal on onnxruntime CPU (FP32 and INT8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--variants", nargs="+", default=[], metavar="BLOCKS@TOTAL",
                    help="time these shapes instead: blocks removed, then l1 channels to TOTAL MACs reduction")
    ap.add_argument("--round-to", type=int, default=16, help="channel block of --variants")
    a = ap.parse_args()
    import torch
    from tqdm.auto import tqdm

    from bench.common import machine_info
    from ccpcsa.data import load_data
    from ccpcsa.errors import UserError
    from ccpcsa.io.checkpoint import load_checkpoint
    from ccpcsa.pruning.loop import calibration_batches
    from ccpcsa.training.engine import evaluate

    torch.set_num_threads(a.threads)
    try:
        data = load_data(a.data, progress=False)
        ck = load_checkpoint(a.checkpoint)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    base = ck.model
    size = data.input_size
    base_acc = evaluate(base, data.val, data.mean, data.std)[0]
    timer = _Timer(base, data, a.threads) if a.latency or a.variants else None
    head = {"command": "python -m bench.block_drop " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
            "machine": machine_info(), "checkpoint": a.checkpoint, "threads": a.threads}
    if a.variants:
        assert timer is not None
        _emit({**head, "round_to": a.round_to, "variants": [_variant(base, v, a.round_to, size, timer) for v in a.variants]},
              a.out)
        return
    from ccpcsa.pruning.depth_choice import price_blocks, without_blocks

    recal = (lambda: calibration_batches(data, a.recalibrate, 128, "cpu", 999)) if a.recalibrate > 0 else None
    with tqdm(desc="blocks priced", unit="block") as bar:
        rows = price_blocks(base, lambda m: evaluate(m, data.val, data.mean, data.std)[0], recal, input_size=size,
                            reference=base_acc, step=lambda: bar.update(1))
    print(f"{'block':14s} {'MACs':>7s} {'val %':>7s} {'drop pp':>8s}" + ("   FP32 b1/b32   INT8 b1/b32" if timer else ""))
    for row in rows:
        speed = ""
        if timer is not None:
            s = row["speedup"] = timer.speedups(without_blocks(base, [row["block"]], recal, size), row["block"])
            speed = "   " + "  ".join(f"{s[f]['1']:.2f}/{s[f]['32']:.2f}x" for f in ("fp32", "int8"))
        print(f"{row['block']:14s} {-100 * row['macs_share']:6.1f}% {row['val_accuracy']:7.2f} {row['drop_pp']:8.2f}{speed}",
              flush=True)
    _emit({**head, "data": a.data, "base_val_accuracy": base_acc, "recalibrate": a.recalibrate, "blocks": rows}, a.out)


def _emit(out: dict[str, Any], path: str | None) -> None:
    """Print ``out`` as one JSON line; write it atomically to ``path`` too when given."""
    if path:
        from ccpcsa.io.artifacts import atomic_write_json

        atomic_write_json(path, out)
    print(json.dumps(out))


def _variant(base: Any, spec: str, round_to: int, size: int, timer: _Timer) -> dict[str, Any]:
    """``BLOCKS@TOTAL``: remove the blocks, prune l1-ranked channels (``round_to`` blocks) to ``TOTAL`` MACs reduction,
    time it against the unpruned model; print one line and return the row."""
    from ccpcsa.criteria import ScoreContext, get_criterion
    from ccpcsa.errors import UserError
    from ccpcsa.models import count_complexity
    from ccpcsa.models.depth import drop_blocks
    from ccpcsa.surgery.macs_target import prune_to_target
    from ccpcsa.surgery.prune import ChannelPruner

    blocks, _, total = spec.partition("@")
    try:
        target = float(total)
    except ValueError:
        raise SystemExit(f"error: --variants {spec!r} must look like layer1.1@0.4 (blocks@MACs reduction)") from None
    model = copy.deepcopy(base)
    try:
        drop_blocks(model, [b for b in blocks.split("+") if b], size)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    base_macs = count_complexity(base, size).macs
    pruner = ChannelPruner(model, size, round_to, round_to, 0.9)
    prune_to_target(pruner, get_criterion("l1").score(ScoreContext(model, pruner)), target_macs=(1 - target) * base_macs)
    row = {"variant": spec, "macs_reduction": 1 - count_complexity(model, size).macs / base_macs,
           "speedup": timer.speedups(model, spec.replace("+", "_").replace("@", "_"))}
    s = row["speedup"]
    print(f"{spec:26s} MACs -{100 * row['macs_reduction']:.1f}%  FP32 {s['fp32']['1']:.2f}±{s['fp32']['1_se']:.2f} / "
          f"{s['fp32']['32']:.2f}±{s['fp32']['32_se']:.2f}  INT8 {s['int8']['1']:.2f}±{s['int8']['1_se']:.2f} / "
          f"{s['int8']['32']:.2f}±{s['int8']['32_se']:.2f}", flush=True)
    return row


class _Timer:
    """The unpruned model's FP32 and INT8 (U8S8) ONNX files, and a paired speedup of a variant over them."""

    def __init__(self, base: Any, data: Any, threads: int) -> None:
        from ccpcsa.data import normalize_batch
        from export.metadata import DeployMetadata

        self.dir = Path(tempfile.mkdtemp(prefix="block_drop_"))
        self.threads = threads
        self.meta = DeployMetadata(class_names=data.classes, mean=data.mean, std=data.std, input_size=data.input_size,
                                   run_id="bench")
        self.calib = normalize_batch(data.train.sample(512, seed=0).images, data.mean, data.std).numpy()
        self.ref = self._files(base, "unpruned")

    def _files(self, model: Any, tag: str) -> tuple[Path, Path]:
        from bench.common import export_formats

        f = export_formats(model, self.dir, tag, self.meta, self.calib, int8=("int8_cpu",))
        return f["fp32"], f["int8_cpu"]

    def speedups(self, model: Any, tag: str) -> dict[str, dict[str, float]]:
        """``{fp32|int8: {"1": speedup, "32": speedup, "1_se": …, "32_se": …}}`` over the unpruned files."""
        from export.latency import runtime_speedups

        files = self._files(model, tag)
        out: dict[str, dict[str, float]] = {}
        for fmt, ref, new in (("fp32", self.ref[0], files[0]), ("int8", self.ref[1], files[1])):
            t = runtime_speedups("onnxruntime-cpu", ref, new, 1.0, threads=self.threads, batch_sizes=[1, 32], rounds=11)
            out[fmt] = {b: t[b]["speedup"] for b in t} | {f"{b}_se": t[b]["speedup_se"] for b in t}
        return out


if __name__ == "__main__":
    main()
