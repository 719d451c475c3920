"""Time QSFM scoring (all-pairs SSIM or PSNR of every group's consumed maps + greedy elimination).

Usage: ``python bench/qsfm_scoring.py [--model resnet56] [--images 256] [--metric ssim] [--threads 2]``.
Random (untrained) weights and random normalized images: the cost does not depend on the values.
Target (issue): resnet56 on 256 images ≤ 60 s on 2 CPU cores. Prints one JSON line (``seconds`` is the
wall time of ``criterion.score``: forward passes, hooks, all-pairs similarity, greedy elimination), as
the other benchmarks do for ``python -m bench``.

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here (unless already set): on a machine shared with other
multi-threaded jobs, OpenMP workers that spin at barriers starve each other (measured on 2 shared cores:
87 s with the default policy vs 30 s passive, the same 29 s as one thread). The policy used is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator


def main() -> None:
    """Build the model, score it once, print the wall time of ``criterion.score`` as a JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--metric", default="ssim", choices=("ssim", "psnr"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=32)
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (libgomp) is loaded
    import torch

    from ccpcsa.criteria import ScoreContext
    from ccpcsa.criteria.qsfm import QSFMCriterion
    from ccpcsa.models import build_model
    from ccpcsa.surgery.prune import ChannelPruner

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, 10).eval()
    pruner = ChannelPruner(model, args.input_size, round_to=8)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, args.input_size, args.input_size, generator=g)
    labels = torch.zeros(args.images, dtype=torch.long)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, args.images, args.batch_size):
            yield images[i:i + args.batch_size], labels[i:i + args.batch_size]

    crit = QSFMCriterion(args.metric)
    t0 = time.perf_counter()
    scores = crit.score(ScoreContext(model, pruner, batches=batches))
    dt = time.perf_counter() - t0
    print(json.dumps({"benchmark": "qsfm_scoring", "model": args.model, "metric": args.metric, "images": args.images,
                      "batch_size": args.batch_size, "threads": args.threads, "cpus": os.cpu_count(),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "groups": len(scores),
                      "channels": sum(len(s) for s in scores.values()), "seconds": round(dt, 2), "target_seconds": 60.0,
                      "within_target": dt <= 60.0}))


if __name__ == "__main__":
    main()
