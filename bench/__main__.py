"""``python -m bench [--quick]``: run the benchmarks and write ``bench/results/<date>-<host>.json``.

- training throughput / projected epoch time (``bench/epoch_time.py``)
- QSFM scoring time of resnet56 on 256 images (``bench/qsfm_scoring.py``)
- format latency, unpruned vs l1-pruned resnet20 and resnet56 (``bench/export_latency.py``)

``--quick`` shortens every measurement. Each benchmark's own command prints JSON lines; this driver
collects them with the machine description (cores, CPU, library versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _json_lines(cmd: list[str]) -> list[dict]:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = []
    for line in proc.stdout.splitlines():
        print("  " + line, flush=True)
        if line.startswith("{"):
            rows.append(json.loads(line))
    if proc.returncode != 0:
        rows.append({"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    py = sys.executable
    steps = "5" if a.quick else "20"
    iters = "10" if a.quick else "50"
    results = {
        "epoch_time": _json_lines([py, "bench/epoch_time.py", "--channels-last", "--steps", steps]),
        "qsfm_scoring": _json_lines([py, "bench/qsfm_scoring.py", "--images", "64" if a.quick else "256"]),
        "export_latency": [row for m in ("resnet20", "resnet56")
                           for row in _json_lines([py, "bench/export_latency.py", "--model", m, "--iters", iters])],
    }
    import numpy
    import onnxruntime
    import torch

    out = {"date": time.strftime("%Y-%m-%d"), "host": socket.gethostname(), "quick": a.quick,
           "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                       "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__},
           "results": results}
    dest = ROOT / "bench" / "results" / f"{out['date']}-{out['host']}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
