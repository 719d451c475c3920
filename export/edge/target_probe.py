#!/usr/bin/env python3
"""Measure a probe pack on the target device → ``target.json`` (needs numpy and the target's runtime only).

    python target_probe.py --runtime openvino-cpu [--pack DIR] [--threads N] [--precision fp32 int8] [--out target.json]

The pack (``python -m pipeline probe-pack``; ``pack.json`` beside this file by default) holds the unpruned model
(FP32 and INT8 ONNX), the single-convolution graphs of the latency table the pruner needs (each layer shape of the model
on a grid of widths, per precision), a width staircase of the model's widest convolution and an empty graph (the
runtime's per-call overhead). Each is timed with the interleaved protocol of ``timing.py``; ``target.json`` records
per precision the model's milliseconds per batch size, each grid point's own milliseconds (overhead subtracted), the
staircase and the channel block read off it (:func:`staircase_block`), with the runtime, its version, the device and
the protocol. Back on the build machine: ``python -m pipeline run … --set target.profile=target.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
try:
    from .sessions import EdgeError, open_session, read_json, runtime_identity
    from .timing import interleaved_rounds, own_times, round_medians
except ImportError:  # flat in the bundle or pack folder
    sys.path.insert(0, str(HERE))
    from sessions import EdgeError, open_session, read_json, runtime_identity  # type: ignore[no-redef]
    from timing import interleaved_rounds, own_times, round_medians  # type: ignore[no-redef]

PACK_FORMAT = "ccpcsa-probe-pack/1"
PROFILE_FORMAT = "ccpcsa-target-profile/1"
PACK_FILE = "pack.json"  #: the probe pack's index, written by ``export.target_profile.write_probe_pack``
BLOCKS = (64, 32, 16, 8)  # channel blocks a staircase may show (runtimes' SIMD / Tensor Core multiples)


def staircase_block(widths: Sequence[int], ms: Sequence[float], *, tolerance: float = 0.9, share: float = 0.75) -> int:
    """The runtime's channel block read off a staircase (one convolution timed at output widths ``widths``, a grid of
    a small step): the largest block ``b`` of :data:`BLOCKS` such that for at least ``share`` of the widths ``w`` that
    are not multiples of ``b`` (and whose next multiple was timed) ``ms(w) ≥ tolerance · ms(⌈w/b⌉·b)`` — a width
    between two multiples costs about as much as the next one, so pruning to it buys nothing. The grid's step when no
    block qualifies (a runtime without padding to blocks)."""
    t = dict(zip(widths, ms, strict=True))
    step = min(widths[i + 1] - widths[i] for i in range(len(widths) - 1)) if len(widths) > 1 else 1
    for b in BLOCKS:
        pairs = [(t[w], t[-(-w // b) * b]) for w in widths if w % b and -(-w // b) * b in t]
        if len(pairs) >= 2 and sum(a >= tolerance * c for a, c in pairs) >= share * len(pairs):
            return b
    return step


def _call(session: Any, shape: Sequence[int]) -> Callable[[], object]:
    """A no-argument call of ``session`` on a fixed random input of ``shape``."""
    x = np.random.default_rng(1).standard_normal(tuple(shape), dtype=np.float32)
    return lambda: session.run(x)


def _say(msg: str) -> None:
    print(msg, flush=True)


def measure(pack: dict[str, Any], root: Path, runtime: str, threads: int, precision: str, rounds: int) -> dict[str, Any]:
    """One precision of the pack on ``runtime``: ``{model_ms: {batch: ms}, layers: {key: ms}, staircase: [[w, ms]],
    block}`` — the model by interleaved rounds per batch, layers and staircase by :func:`timing.own_times`."""
    entry = pack["models"][precision]
    model = open_session(runtime, root / entry, threads=threads, spinning=False)
    calls = [_call(model, [b, *pack["input_chw"]]) for b in pack["batches"]]
    samples = interleaved_rounds(calls, rounds=max(rounds, 5), per_round=[5] * len(calls), warmup=2)
    model_ms = {str(b): round_medians(s) for b, s in zip(pack["batches"], samples, strict=True)}
    empty = open_session(runtime, root / pack["empty"], threads=threads, spinning=False)
    empty_call = _call(empty, [1, 1])
    out: dict[str, Any] = {"model_ms": model_ms}
    for part in ("layers", "staircase"):
        items = [e for e in pack[part] if e["precision"] == precision]
        sessions = [open_session(runtime, root / e["file"], threads=threads, spinning=False) for e in items]
        calls = [_call(s, e["input_shape"]) for s, e in zip(sessions, items, strict=True)]
        t0 = time.perf_counter()
        got = own_times(calls, empty_call, rounds=rounds,
                        progress=lambda d, n, p=part: print(f"\r  {precision} {p}: {d}/{n}", end="", flush=True))
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if part == "layers":
            out["layers"] = {e["key"]: ms for e, ms in zip(items, got, strict=True)}
        else:
            out["staircase"] = [[e["c_out"], ms] for e, ms in zip(items, got, strict=True)]
    stair = sorted(out.get("staircase", []))
    out["block"] = staircase_block([w for w, _ in stair], [m for _, m in stair]) if stair else pack["grid_step"]
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Command line (module doc); exit 0 with ``target.json`` written, 2 with one ``error:`` line on bad input."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default=str(HERE), help="the probe pack folder (holding pack.json); default: this file's")
    ap.add_argument("--runtime", default="onnxruntime-cpu", help="onnxruntime-cpu, onnxruntime-<provider>, openvino-cpu, ...")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads, as the deployment will use")
    ap.add_argument("--precision", nargs="+", default=None, help="fp32 and/or int8 (default: every precision of the pack)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per timing")
    ap.add_argument("--out", default="target.json")
    a = ap.parse_args(argv)
    try:
        root = Path(a.pack)
        pack_file = root / PACK_FILE
        if not pack_file.is_file():
            raise EdgeError(f"no pack.json in '{root}'; give --pack DIR, the folder `python -m pipeline probe-pack` wrote")
        pack = read_json(pack_file, "copy the pack again")
        if pack.get("format") != PACK_FORMAT:
            raise EdgeError(f"'{pack_file}' is not a probe pack of this version (format {pack.get('format')!r}, "
                            f"expected {PACK_FORMAT!r}); rebuild it with `python -m pipeline probe-pack`")
        precisions = a.precision or sorted(pack["models"])
        missing = [p for p in precisions if p not in pack["models"]]
        if missing:
            raise EdgeError(f"the pack has no {', '.join(missing)} model (it has {', '.join(sorted(pack['models']))})")
        if a.threads < 1 or a.rounds < 2:
            raise EdgeError(f"--threads must be ≥ 1 and --rounds ≥ 2 (got {a.threads}, {a.rounds})")
        ident = runtime_identity(a.runtime, a.threads)
        _say(f"probing {pack['model']['name']} on {a.runtime} {ident['version']} ({ident['device']}, {a.threads} threads)")
        t0 = time.perf_counter()
        result = {p: measure(pack, root, a.runtime, a.threads, p, a.rounds) for p in precisions}
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    profile = {"format": PROFILE_FORMAT, "pack": {"sha256": _sha256(pack_file), "model": pack["model"],
                                                 "layer_batch": pack["layer_batch"], "grid_step": pack["grid_step"]},
               "identity": ident, "threads": a.threads, "batches": pack["batches"],
               "protocol": {"rounds": a.rounds, "timer": "interleaved rounds, per-call overhead subtracted from layers"},
               "precisions": result, "seconds": time.perf_counter() - t0}
    out = Path(a.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(profile, indent=1))
    os.replace(tmp, out)
    for p, r in result.items():
        ms = ", ".join(f"b{b} {v:.3f} ms" for b, v in r["model_ms"].items())
        _say(f"{p}: unpruned model {ms}; channel block {r['block']}; {len(r.get('layers', {}))} layer points")
    _say(f"wrote {out} in {profile['seconds']:.0f} s; on the build machine: --set target.profile={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
