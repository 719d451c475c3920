"""Target probe benchmark (issue #36): how long ``target_probe.py`` takes, what it reads off each runtime, and how well
a profile predicts the speedup of a pruned model that is then measured on that runtime.

    python -m bench.target_probe [--models resnet20 resnet56] [--runtimes onnxruntime-cpu openvino-cpu]
                                 [--pruned RUN_DIR] [--threads 2] [--out bench/results/<date>-vm-target-probe.json]

For each model (the shared trained checkpoints): the probe pack, then ``target_probe.py`` run as a separate process
(as on a device: numpy + the runtime), timed end to end. With ``--pruned RUN_DIR`` (a finished run of resnet20): the
profile's calibrated estimate of that run's pruned model (:class:`export.target_profile.ProfileLatencyProbe`) against
the paired speedup measured on the same runtime (:func:`export.latency.runtime_speedups`, FP32 and INT8 at batch 1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ccpcsa.io.artifacts import atomic_write_json
from ccpcsa.io.checkpoint import load_checkpoint
from pipeline.artifacts import (
    BASELINE_CKPT,
    BASELINE_INT8_CPU_ONNX,
    BASELINE_SIM_ONNX,
    MODEL_INT8_CPU_ONNX,
    MODEL_SIM_ONNX,
    PRUNED_CKPT,
)

from .common import machine_info

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"


def probe(model: str, runtime: str, threads: int, work: Path) -> dict[str, Any]:
    """Pack ``model`` and run the probe on ``runtime`` in a child process → the profile, with the wall seconds."""
    from export.edge.target_probe import PACK_FILE
    from export.target_profile import write_probe_pack

    ck = load_checkpoint(SHARED / f"{model}_cifar10.pt")
    pack = work / f"pack-{model}"
    if not (pack / PACK_FILE).is_file():
        write_probe_pack(ck.model, 32, pack, name=model, batches=[1, 32], layer_batch=1)
    out = work / f"target-{model}-{runtime}.json"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(pack / "target_probe.py"), "--runtime", runtime, "--threads", str(threads),
                        "--out", str(out)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    data = json.loads(out.read_text())
    return {"model": model, "runtime": runtime, "wall_s": wall, "profile": str(out),
            "blocks": {p: rec["block"] for p, rec in data["precisions"].items()},
            "model_ms": {p: rec["model_ms"] for p, rec in data["precisions"].items()},
            "staircase": {p: rec["staircase"] for p, rec in data["precisions"].items()}, "identity": data["identity"]}


def prediction(profile: str, run_dir: Path, runtime: str, threads: int) -> dict[str, Any]:
    """The profile's predicted batch-1 speedup of ``run_dir``'s pruned model vs the paired measurement on ``runtime``."""
    from export.latency import runtime_speedups
    from export.target_profile import ProfileLatencyProbe, load_profile

    prof = load_profile(profile)
    base, pruned = load_checkpoint(run_dir / BASELINE_CKPT).model, load_checkpoint(run_dir / PRUNED_CKPT).model
    out: dict[str, Any] = {}
    files = {"fp32": (BASELINE_SIM_ONNX, MODEL_SIM_ONNX), "int8": (BASELINE_INT8_CPU_ONNX, MODEL_INT8_CPU_ONNX)}
    for prec, (ref, new) in files.items():
        p = ProfileLatencyProbe(prof, prec, 1, 32)
        ref_ms = p.set_reference(base)
        est = ref_ms / p.measure_pair(pruned)[1]
        got = runtime_speedups(runtime, run_dir / ref, run_dir / new, 1.0, threads=threads, batch_sizes=[1], rounds=21)["1"]
        out[prec] = {"predicted": est, "measured": got["speedup"], "measured_se": got["speedup_se"],
                     "relative_error": est / got["speedup"] - 1}
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line (module doc)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    ap.add_argument("--runtimes", nargs="+", default=["onnxruntime-cpu", "openvino-cpu"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pruned", default=None, help="a finished resnet20 run directory: check the profiles' predictions")
    ap.add_argument("--out", default=f"bench/results/{time.strftime('%Y-%m-%d')}-vm-target-probe.json")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="target-probe-"))
    rows = []
    for model in a.models:
        for rt in a.runtimes:
            row = probe(model, rt, a.threads, work)
            if a.pruned and model == "resnet20":
                row["prediction"] = prediction(row["profile"], Path(a.pruned), rt, a.threads)
            print(json.dumps({k: v for k, v in row.items() if k not in ("staircase", "identity")}), flush=True)
            rows.append(row)
    atomic_write_json(a.out, {"command": " ".join(["python -m bench.target_probe", *(argv or sys.argv[1:])]),
                              "machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "rows": rows})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
