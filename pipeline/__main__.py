"""``python -m pipeline`` (also ``ccpcsa-pipeline``): data → pruned model → validated ONNX/TensorRT artifacts.

    python -m pipeline run --config configs/default.yaml [--run-dir DIR] [--set key=value ...] [--from STAGE] [--until STAGE]
    python -m pipeline stages            # list the stages
    python -m pipeline keys              # list every config key
    python -m pipeline report --run-dir DIR
    python -m pipeline probe-pack --config CONFIG --out DIR   # then target_probe.py on the device → target.json
    python -m pipeline report --run-dir DIR --device-result result.json   # add a result from the target device

User mistakes print one ``error:`` line and exit 2; a failed gate exits 1; success exits 0; Ctrl-C exits
130 and SIGTERM 143, both after releasing the lock (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from ccpcsa.errors import CliParser, run_cli

from .config import key_tree, load_config, valid_keys


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so the run unwinds like Ctrl-C: temporary files are deleted,
    the lock is released, finished stages stay recorded. A ``BaseException``, so no stage handler
    records it as a stage failure."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (main thread only; the old handler is restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _run_dir(args: argparse.Namespace, run_name: str) -> Path:
    return Path(args.run_dir) if args.run_dir else Path("runs") / run_name


def _add_device_result(args: argparse.Namespace) -> int:
    """``report --device-result``: check the result against the run, store it, re-render the report (no stage runs)."""
    from ccpcsa.errors import UserError

    from .device_result import add_device_result
    from .report import write_report

    if not args.run_dir:
        raise UserError("report --device-result needs --run-dir: the run the bundle came from")
    dest = add_device_result(Path(args.run_dir), Path(args.device_result), write_report)
    print(f"stored {dest}; report re-rendered: {Path(args.run_dir) / 'report.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    from .stages import STAGES

    p = CliParser(prog="python -m pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the chain (skips up-to-date stages)")
    r.add_argument("--config", default=None, help="YAML config (default: built-in defaults = configs/default.yaml)")
    r.add_argument("--run-dir", default=None, help="run directory (default runs/<run.name>)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    r.add_argument("--from", dest="from_stage", default=None, metavar="STAGE", help="force this stage and all after it")
    r.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep = sub.add_parser("report", help="(re)build report + bundle of an existing run")
    rep.add_argument("--config", default=None)
    rep.add_argument("--run-dir", default=None)
    rep.add_argument("--set", dest="overrides", action="append", default=[])
    rep.add_argument("--device-result", default=None, metavar="RESULT_JSON",
                     help="result.json of the bundle's validate_on_device.py: check it against the run, store it under "
                          "device_results/ and re-render the report (needs --run-dir; nothing else re-runs)")
    pp = sub.add_parser("probe-pack", help="write the probe pack of the config's model, for target_probe.py on the device")
    pp.add_argument("--config", default=None)
    pp.add_argument("--run-dir", default=None, help="take the model from this run's baseline.pt")
    pp.add_argument("--set", dest="overrides", action="append", default=[])
    pp.add_argument("--out", required=True, help="folder to write (copy it to the device)")
    sub.add_parser("stages", help="list stages")
    kp = sub.add_parser("keys", help="print the config keys as a tree, with types and defaults")
    kp.add_argument("--flat", action="store_true", help="one dotted key a line (what --set takes)")
    args = p.parse_args(argv)
    def body() -> int:
        if args.cmd == "stages":
            for s in STAGES:
                files = f" → {', '.join(s.outputs)}" if s.outputs else ""
                print(f"{s.name:10s} {s.doc}{files}")
            return 0
        if args.cmd == "keys":
            print("\n".join(valid_keys()) if args.flat else key_tree())
            return 0
        if args.cmd == "probe-pack":
            from .probe_pack import write_pack

            write_pack(load_config(args.config, args.overrides), Path(args.out), Path(args.run_dir) if args.run_dir else None)
            return 0
        if args.cmd == "report" and args.device_result:
            return _add_device_result(args)
        from .orchestrate import run_stages

        cfg = load_config(args.config, args.overrides)
        run_dir = _run_dir(args, cfg.run.name)
        if args.cmd == "report":
            return run_stages(cfg, STAGES, run_dir, from_stage="report", progress=False)
        return run_stages(cfg, STAGES, run_dir, from_stage=args.from_stage, until=args.until, progress=not args.no_progress)

    def guarded() -> int:
        try:
            with _sigterm_unwinds():
                return body()
        except Terminated:
            print("terminated (SIGTERM); rerun the same command to resume", file=sys.stderr)
            return 128 + signal.SIGTERM

    return run_cli(guarded, "interrupted; rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
