"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks, merge into ``bench/results/<date>-<host>[-quick].json``.

- ``epoch_time``: training throughput / projected epoch time (``bench/epoch_time.py``)
- ``qsfm_scoring``: QSFM scoring time of resnet56 on 256 images (``bench/qsfm_scoring.py``)
- ``export_latency``: format latency, unpruned vs l1-pruned resnet20 and resnet56 (``bench/export_latency.py``)
- ``criteria``: every pruning criterion at equal FLOPs + realized ORT speedup, INT8, round_to
  (``bench/criteria.py``; CPU preset ≤ 2 h, ``--quick`` ≤ 15 min on 2 cores; also writes
  ``<date>-<host>[-quick]-criteria.md`` and its plots)
- ``torchvision_zoo``: torchvision's 15 classification architectures and 5 timm families through ``pipeline run``
  (``bench/torchvision_zoo.py``; also writes ``<date>-<host>-torchvision-zoo.{json,md}``; ``--quick``: 3 of them)

``--quick`` shortens every measurement (the criteria benchmark's quick preset; its results go to
``…-quick.json`` so they never overwrite a full session). Each benchmark's results are merged into the
file under its name, keeping the others, with the machine description (cores, CPU model, library versions).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("epoch_time", "qsfm_scoring", "export_latency", "criteria", "torchvision_zoo")


def _json_lines(cmd: list[str]) -> list[dict[str, Any]]:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess_run(cmd)
    rows = []
    for line in proc.stdout.splitlines():
        print("  " + line, flush=True)
        if line.startswith("{"):
            rows.append(json.loads(line))
    if proc.returncode != 0:
        rows.append({"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"})
    return rows


def subprocess_run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the repository root with it on ``PYTHONPATH``, capturing text output."""
    from bench.common import repo_env

    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=repo_env())


def main() -> int:
    from bench import criteria
    from bench.common import RESULTS_DIR, merge_results, results_stem

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="run only these benchmarks")
    g = ap.add_argument_group("criteria benchmark")
    criteria.add_arguments(g)
    a = ap.parse_args()
    py = sys.executable
    steps = "5" if a.quick else "20"
    iters = "10" if a.quick else "50"
    out = RESULTS_DIR / f"{results_stem(a.quick)}.json"
    command = "python -m bench " + " ".join(sys.argv[1:])
    simple = {
        "epoch_time": lambda: _json_lines([py, "bench/epoch_time.py", "--channels-last", "--steps", steps]),
        "qsfm_scoring": lambda: _json_lines([py, "bench/qsfm_scoring.py", "--images", "64" if a.quick else "256"]),
        "export_latency": lambda: [row for m in ("resnet20", "resnet56")
                                   for row in _json_lines([py, "-m", "bench.export_latency", "--model", m, "--iters", iters])],
        "torchvision_zoo": lambda: _json_lines([py, "-m", "bench.torchvision_zoo"] + (
            ["--only", "mobilenet_v3_small", "shufflenet_v2_x1_0", "squeezenet1_1", "--stem", results_stem(True) + "-torchvision-zoo"]
            if a.quick else [])),
    }
    for name in a.only:
        if name in simple:
            merge_results(out, {name: simple[name]()}, quick=a.quick, command=command)
    if "criteria" in a.only:
        try:
            criteria.run_benchmark(criteria.preset_from_args(a), root=Path(a.root).resolve() if a.root else None, out_json=out,
                                   checkpoint=a.baseline, dry_run=a.dry_run, command=command)
        except criteria.PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if not a.dry_run:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
