"""``python -m ccpcsa.oneshot`` — the one-shot pruning command: prune a checkpoint one-shot
(:func:`ccpcsa.pruning.oneshot_prune.prune_oneshot`) and print one JSON line."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import yaml

from . import placement
from .criteria import get_criterion
from .data import load_data, parse_spec
from .errors import CliParser, UserError, run_cli
from .io.checkpoint import load_checkpoint
from .pruning.allocation import ALLOCATIONS
from .pruning.oneshot_prune import prune_oneshot
from .training.engine import check_device


def main(argv: list[str] | None = None) -> int:
    """``python -m ccpcsa.oneshot CKPT --data SPEC --criterion qsfm --target 0.47 [--no-compensate] [--recalibrate-bn]
    [--test-images N]``: prune a checkpoint one-shot and print one JSON line (accuracies before/after, FLOPs,
    compensation counts). The pruned model is not saved. User mistakes print one ``error:`` line and exit 2."""
    ap = CliParser(prog="python -m ccpcsa.oneshot", description=main.__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="imagefolder:../shared/data/cifar10-jpg.tar.gz")
    ap.add_argument("--criterion", default="qsfm")
    ap.add_argument("--target", type=float, default=0.47)
    ap.add_argument("--no-compensate", action="store_true")
    ap.add_argument("--recalibrate-bn", action="store_true")
    ap.add_argument("--calibration-images", type=int, default=256)
    ap.add_argument("--test-images", type=int, default=None, help="random subset of the test split (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allocation", choices=[a for a in ALLOCATIONS if a != "latency"], default="global",
                    help="block order (ccpcsa.pruning.allocation; 'latency' needs the pipeline's latency probe)")
    ap.add_argument("--scope", choices=("all", "internal"), default="all",
                    help="internal: leave residual streams whole, prune block-internal channels only")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="criterion option (prune.criterion.options), e.g. compensation=lstsq for qsfm; repeatable")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    a = ap.parse_args(argv)
    return run_cli(lambda: _main(a))


def _main(a: argparse.Namespace) -> int:
    """Body of :func:`main`: validate every argument, load checkpoint and data, prune, print the summary."""
    if not 0 <= a.target < 1:  # also rejects NaN
        raise UserError(f"--target (FLOPs reduction) must be in [0, 1), got {a.target}")
    if a.calibration_images < 1:
        raise UserError(f"--calibration-images must be ≥ 1, got {a.calibration_images}")
    if a.test_images is not None and a.test_images < 1:
        raise UserError(f"--test-images must be ≥ 1, got {a.test_images}")
    if a.seed < 0:
        raise UserError(f"--seed must be ≥ 0, got {a.seed}")
    if a.round_to < 1:
        raise UserError(f"--round-to must be ≥ 1, got {a.round_to}")
    options = {}
    for item in a.option:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option '{item}' must look like KEY=VALUE (e.g. compensation=lstsq)")
        options[key.strip()] = yaml.safe_load(raw)
    criterion = get_criterion(a.criterion, **options)  # unknown criterion or option → UserError before anything is loaded
    check_device(a.device, "--device")
    parse_spec(a.data, progress=False)
    ck = load_checkpoint(a.checkpoint, device=placement.resolve_device(a.device))
    data = load_data(a.data, progress=False)
    if len(data.classes) != ck.spec.num_classes:
        raise UserError(f"checkpoint {a.checkpoint} has {ck.spec.num_classes} classes but dataset {a.data} has "
                        f"{len(data.classes)}; use a checkpoint trained on this dataset")
    if a.test_images is not None:
        data = replace(data, test=data.test.sample(a.test_images, seed=a.seed))
    r = prune_oneshot(ck.model, data, criterion, a.target, input_size=ck.spec.input_size, compensate=not a.no_compensate,
                      calibration_images=a.calibration_images, recalibrate_bn=a.recalibrate_bn, seed=a.seed,
                      allocation=a.allocation, scope=a.scope, round_to=a.round_to)
    s = r.summary()
    comp = s.pop("compensation")
    s.update(checkpoint=a.checkpoint, test_images=len(data.test), recalibrate_bn=a.recalibrate_bn, allocation=a.allocation, options=options,
             scope=a.scope, round_to=a.round_to,
             drop_test_pp=r.test_before - r.test_pruned,
             compensated_groups=comp["compensated"] if comp else 0, skipped_groups=comp["skipped"] if comp else 0)
    print(json.dumps(s))
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
