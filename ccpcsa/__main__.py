"""``python -m ccpcsa`` — train a zoo model, or print model complexity.

    python -m ccpcsa train --model resnet20 --data imagefolder:../shared/data/cifar10-jpg.tar.gz --epochs 30 --out runs/r20.pt
    torchrun --nproc_per_node=2 -m ccpcsa train ...      # DDP (gloo on CPU, nccl on GPU)
    python -m ccpcsa info --model resnet56

User mistakes print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import fields
from pathlib import Path

from .data import load_data, parse_spec
from .errors import CliParser, UserError, run_cli, unknown
from .io.artifacts import ensure_writable_dir
from .io.checkpoint import ModelSpec, save_checkpoint
from .models import build_model, count_complexity, list_models, native_input_size
from .models.registry import ZOO, _resolve_custom, is_custom
from .training import distributed as ddp
from .training.engine import TrainConfig, check_device, evaluate, fit


def _check_model(name: str) -> None:
    """UserError unless ``name`` is a zoo model or an importable ``package.module:factory``."""
    if is_custom(name):
        _resolve_custom(name)
    elif name not in ZOO:
        raise unknown("model", name, [*ZOO, "package.module:factory"])


def _check_train_args(args: argparse.Namespace, cfg: TrainConfig) -> None:
    """Every cheap check before any data is read or any epoch is trained: values, model, device, data
    spec and the checkpoint's directory (so a typo never costs a training run)."""
    cfg.validate()
    _check_model(args.model)
    check_device(args.device, "--device")
    if args.val_size is not None and args.val_size < 0:
        raise UserError(f"--val-size must be ≥ 0, got {args.val_size}")
    parse_spec(args.data, progress=False)
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise UserError(f"--out {out} is a directory; give a checkpoint file path such as {out / 'model.pt'}")
        ensure_writable_dir(out.parent, "checkpoint directory (--out)")


def _train(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    cfg = TrainConfig(**overrides)
    _check_train_args(args, cfg)
    info, device = ddp.init(args.device)
    try:
        data = load_data(args.data, val_size=args.val_size, seed=cfg.seed, progress=info.is_main)
        spec = ModelSpec(args.model, len(data.classes), data.input_size)
        model = build_model(args.model, len(data.classes))
        result = fit(model, data, cfg, device=device, checkpoint=args.out, spec=spec, resume=args.resume, dist_info=info,
                     progress=not args.quiet)
        digest = hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in model.state_dict().values())).hexdigest()
        if args.print_weights_hash:
            print(f"rank {info.rank} weights sha256 {digest}", flush=True)
        if info.is_main:
            test_acc, _ = evaluate(model, data.test, data.mean, data.std, device=device)
            if args.out:
                save_checkpoint(args.out, model, spec, data.classes, data.mean, data.std,
                                meta={"val_accuracy": result.val_accuracy, "test_accuracy": test_acc, "train": cfg.__dict__})
            summary = {"model": args.model, "val_accuracy": result.val_accuracy, "test_accuracy": test_acc, "seconds": result.seconds,
                       "epoch_seconds": [round(r["seconds"], 1) for r in result.history], "world_size": info.world_size}
            print(json.dumps(summary))
    finally:
        ddp.cleanup()
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.num_classes < 1:
        raise UserError(f"--num-classes must be ≥ 1, got {args.num_classes}")
    if args.input_size is not None and args.input_size < 8:
        raise UserError(f"--input-size must be ≥ 8, got {args.input_size}")
    size = args.input_size or native_input_size(args.model)
    c = count_complexity(build_model(args.model, args.num_classes), size)
    print(json.dumps({"model": args.model, "input_size": size, "params": c.params, "macs": c.macs}))
    return 0


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


_FIELD_TYPES = {"int": int, "float": float, "str": str, "bool": _bool, "int | None": int}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    p = CliParser(prog="python -m ccpcsa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a model from scratch (resumable)")
    t.add_argument("--model", default="resnet20", help=f"zoo name ({', '.join(list_models())}) or package.module:factory")
    t.add_argument("--data", default="synthetic", help="dataset spec: imagefolder:PATH | cifar10[:DIR] | cifar100[:DIR] | synthetic")
    t.add_argument("--out", default=None, help="checkpoint path (written atomically after every epoch)")
    t.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    t.add_argument("--device", default="auto")
    t.add_argument("--val-size", type=int, default=None)
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--print-weights-hash", action="store_true", help="print each rank's final weight hash (DDP check)")
    for f in fields(TrainConfig):  # every TrainConfig field is a flag, e.g. --epochs, --lr, --max-steps-per-epoch
        t.add_argument("--" + f.name.replace("_", "-"), type=_FIELD_TYPES[str(f.type)], default=None, dest=f.name,
                       help=f"(default {f.default})")
    i = sub.add_parser("info", help="print params and MACs of a model")
    i.add_argument("--model", required=True)
    i.add_argument("--num-classes", type=int, default=10)
    i.add_argument("--input-size", type=int, default=None)
    args = p.parse_args(argv)
    return run_cli(lambda: _train(args) if args.cmd == "train" else _info(args))


if __name__ == "__main__":
    sys.exit(main())
