"""The validate stage's speed gates and the INT8 stages' agreement gate, each way: a run passes when the measured number
clears the threshold and fails (exit 1, the stage marked failed, earlier artifacts kept) when it does not — with real
onnxruntime and OpenVINO sessions timing and comparing real exported files, never stand-ins (issue #38)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from pipeline.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# cheap timing: a few interleaved rounds on both CPU runtimes; the speed margins of these two models are several-fold
# (a quarter of the MACs vs BAM gates kept), far outside the timer's noise
FAST_TIMING = ("--set", "checks.require_speedup=true", "--set", "export.speedup_rounds=5", "--set", "export.int8=false",
               "--set", "checks.eval_images=200")
# a wide tiny net without BAM, pruned to a quarter of its MACs in one step: several times faster on every CPU runtime
FASTER = ("--set", "model.kwargs={width: 96}", "--set", "attention.enabled=false", "--set", "prune.target.flops_reduction=0.75",
          "--set", "prune.steps.flops_reduction=0.75", "--set", "prune.steps.max_iterations=1", "--set", "prune.widths.round_to=8",
          "--set", "train.epochs=2", "--set", "train.max_steps_per_epoch=6")


def _run(run_dir: Path, *extra: str) -> int:
    return main(["run", "--config", SMOKE, "--run-dir", str(run_dir), "--no-progress", *extra])


def _stage(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"][name]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _speed_checks(record: dict) -> list[dict]:
    return [c for c in record["checks"] if c["name"].startswith("pruned_speedup_")]


@pytest.fixture(scope="module")
def faster_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("faster")
    assert _run(run_dir, "--until", "validate", *FAST_TIMING, *FASTER) == 0
    return run_dir


def test_speed_gate_passes_a_pruned_model_that_is_faster(faster_run):
    rec = _stage(faster_run, "validate")
    checks = _speed_checks(rec)
    # FP32 and INT8, batch 1 and 8, on onnxruntime and OpenVINO: 8 gates, each a real paired timing above 1
    assert len(checks) == 8 and {c["name"].endswith("@openvino-cpu") for c in checks} == {True, False}
    assert rec["status"] == "ok" and all(c["passed"] and c["value"] > 1.0 for c in checks)
    sp = rec["metrics"]["speedups"]
    assert set(sp) == {"onnxruntime-cpu", "openvino-cpu"}
    assert all(sp[r][k][b]["speedup"] > 1.0 for r in sp for k in ("fp32", "int8") for b in ("1", "8"))


def test_speed_gate_fails_a_pruned_model_that_is_slower(tmp_path, capsys):
    # the smoke net keeps its BAM gates in the pruned graph: −30 % MACs but more nodes, so it runs slower
    run = tmp_path / "slower"
    assert _run(run, "--until", "validate", *FAST_TIMING) == 1
    err = capsys.readouterr().err
    assert "stage validate failed" in err and "pruned_speedup_fp32_b1" in err
    rec = _stage(run, "validate")
    failed = [c for c in rec["checks"] if not c["passed"]]
    assert rec["status"] == "failed" and failed and failed == _speed_checks(rec)
    assert all(c["value"] < 1.0 for c in failed)
    kept = run / "model.sim.onnx"
    assert kept.exists() and _stage(run, "simplify")["status"] == "ok"
    # the same run with the gate off passes: the gate, not another check, failed it
    before = _sha(kept)
    assert _run(run, "--until", "validate", *FAST_TIMING, "--set", "checks.require_speedup=false") == 0
    assert _stage(run, "validate")["status"] == "ok" and not _speed_checks(_stage(run, "validate"))
    assert _sha(kept) == before


def test_int8_agreement_gate_each_way(tmp_path, capsys):
    # the smoke net as configured (trained enough that INT8 flips a few low-margin predictions; the wide net above,
    # barely trained, predicts one class everywhere and agrees 100 %)
    run = tmp_path / "int8"
    gates = ("--until", "int8_cpu", "--set", "export.int8=false")
    assert _run(run, *gates, "--set", "checks.min_agreement_int8=0") == 0
    agreement = next(c["value"] for c in _stage(run, "int8_cpu")["checks"] if c["name"] == "top1_agreement")
    assert 90.0 <= agreement < 100.0  # INT8 flips a few of the 300 images' top-1: the gate has something to measure
    kept = _sha(run / "model.sim.onnx")
    above, below = math.ceil(agreement * 100 + 1) / 100, math.floor(agreement * 100 - 1) / 100

    # a threshold just above the measured agreement: the stage re-quantizes, re-compares and fails at the gate
    assert _run(run, *gates, "--set", f"checks.min_agreement_int8={above}") == 1
    err = capsys.readouterr().err
    assert "stage int8_cpu failed" in err and "top1_agreement" in err
    rec = _stage(run, "int8_cpu")
    gate = next(c for c in rec["checks"] if c["name"] == "top1_agreement")
    assert rec["status"] == "failed" and not gate["passed"] and gate["value"] == pytest.approx(agreement)
    assert gate["threshold"] == above and _sha(run / "model.sim.onnx") == kept

    # just below it: the same measurement passes
    assert _run(run, *gates, "--set", f"checks.min_agreement_int8={below}") == 0
    rec = _stage(run, "int8_cpu")
    gate = next(c for c in rec["checks"] if c["name"] == "top1_agreement")
    assert rec["status"] == "ok" and gate["passed"] and gate["value"] == pytest.approx(agreement)
