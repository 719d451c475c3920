"""Benchmark: training throughput (images/s) and epoch time of the real trainer (``ccpcsa.training.engine.fit``).

    python bench/epoch_time.py [--models resnet20 resnet56] [--steps 20] [--batch-size 128] [--device auto]
                               [--channels-last] [--no-amp] [--compile auto|on|off] [--full-epoch] [--out FILE]

Each model runs ``fit`` for two epochs of ``--steps`` optimizer steps (``--full-epoch``: whole epochs) on the
training split, with augmentation, without validation (the validation split is emptied). The first epoch is the
warm-up (cuDNN autotuning, compilation, caches); the second is timed — ``fit``'s own per-epoch train time, so
what is measured is the trainer the pipeline uses, train steps only. Reported: images/s, the measured
epoch seconds, the projected seconds of a full epoch, and the warm-up epoch's seconds. Works against older
checkouts of the trainer too (for before/after comparisons): fields it lacks are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from typing import Any

import torch

from ccpcsa.data import ArrayDataset, DataSplits, load_data
from ccpcsa.models import build_model
from ccpcsa.training.engine import TrainConfig, fit


def time_fit(name: str, data: DataSplits, *, steps: int | None, batch_size: int, device: str = "cpu",
             channels_last: bool = False, amp: bool = True, compile: str = "auto", lr: float = 0.05) -> dict[str, Any]:
    """Train ``name`` for a warm-up epoch and a timed epoch of ``steps`` steps (None: full epochs) with ``fit``;
    return ``{"model", "images_per_s", "epoch_seconds", "epoch_seconds_projected", "warmup_seconds", ...}``."""
    empty = ArrayDataset(data.val.images[:0], data.val.labels[:0])
    train_only = dataclasses.replace(data, val=empty)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw: dict[str, Any] = dict(epochs=2, batch_size=batch_size, lr=lr, schedule="constant", augment=True,
                              channels_last=channels_last, amp=amp, max_steps_per_epoch=steps)
    if "compile" in fields:
        kw["compile"] = compile
    torch.manual_seed(0)
    model = build_model(name, len(data.classes))
    t0 = time.perf_counter()
    res = fit(model, train_only, TrainConfig(**kw), device=device, progress=False, desc=f"bench {name}")
    wall = time.perf_counter() - t0
    warm, timed = res.history[0], res.history[-1]
    seconds = float(timed.get("train_seconds", timed["seconds"]))
    n_steps = steps if steps is not None else len(data.train) // batch_size
    ips = n_steps * batch_size / seconds
    row = {"model": name, "device": str(device), "images_per_s": round(ips, 1), "epoch_seconds": round(seconds, 3),
           "epoch_seconds_projected": round(len(data.train) / ips, 2), "warmup_seconds": round(float(
               warm.get("train_seconds", warm["seconds"])), 2), "steps": n_steps, "batch_size": batch_size,
           "channels_last": channels_last, "amp": amp, "train_loss": round(float(timed["train_loss"]), 4),
           "wall_seconds": round(wall, 1), "threads": torch.get_num_threads()}
    speed = getattr(res, "speed", None)
    if speed:
        row["speed"] = speed
    return row


def main(argv: list[str] | None = None) -> int:
    """CLI (see the module docstring): one JSON line per model, then one with the machine."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--steps", type=int, default=20, help="timed steps per epoch (the warm-up epoch has as many)")
    p.add_argument("--full-epoch", action="store_true", help="whole epochs instead of --steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data", default="imagefolder:../shared/data/cifar10-jpg.tar.gz")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--out", default=None, help="also write the rows as one JSON list to this file")
    a = p.parse_args(argv)
    from ccpcsa.training.distributed import resolve_device

    device = str(resolve_device(a.device))
    data = load_data(a.data, progress=False)
    rows = []
    for name in a.models:
        rows.append(time_fit(name, data, steps=None if a.full_epoch else a.steps, batch_size=a.batch_size, device=device,
                             channels_last=a.channels_last, amp=not a.no_amp, compile=a.compile))
        print(json.dumps(rows[-1]), flush=True)
    import ccpcsa

    machine = {"cpus": os.cpu_count(), "cpu": platform.processor(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "code": os.path.dirname(os.path.dirname(os.path.abspath(ccpcsa.__file__)))}
    print(json.dumps({"machine": machine}))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"rows": rows, "machine": machine}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
