"""Benchmark: training throughput (images/s) and projected CIFAR-10 epoch time per model on this machine.

    python bench/epoch_time.py [--models resnet20 resnet56] [--steps 20] [--batch-size 128]

Times ``--steps`` SGD steps on real CIFAR-10 batches (augmentation included) after 3 warm-up
steps and projects a 45,000-image epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

from ccpcsa.data import BatchLoader, load_data
from ccpcsa.models import build_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data", default="imagefolder:../shared/data/cifar10-jpg.tar.gz")
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    data = load_data(a.data, progress=False)
    rows = []
    for name in a.models:
        model = build_model(name, len(data.classes))
        if a.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = BatchLoader(data.train, a.batch_size, data.mean, data.std, shuffle=True, augment=True, drop_last=True,
                             channels_last=a.channels_last)
        it = iter(loader)
        model.train()
        t0 = 0.0
        for i in range(a.steps + 3):
            if i == 3:
                t0 = time.perf_counter()
            x, y = next(it)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        dt = time.perf_counter() - t0
        ips = a.steps * a.batch_size / dt
        rows.append({"model": name, "images_per_s": round(ips, 1), "epoch_seconds_projected": round(len(data.train) / ips, 1),
                     "batch_size": a.batch_size, "channels_last": a.channels_last, "threads": torch.get_num_threads()})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"machine": {"cpus": os.cpu_count(), "cpu": platform.processor(), "torch": torch.__version__}}))


if __name__ == "__main__":
    main()
