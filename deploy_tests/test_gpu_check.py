"""``bench/gpu_check.py`` (``make gpu-check``) on a machine without a GPU: its refusal, its plumbing, a dry run.

Nobody can rehearse the check on a GPU before it is needed there, so everything it does apart from using the
GPU is exercised here: argument handling, subprocess timeouts, failure isolation, result parsing, the JSON
and log it writes, and the overrides it hands to the pipeline (valid config keys).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_with_one_line_when_no_gpu_is_visible(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out-dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, env=gpu_check.child_env(), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA GPU visible")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path):
    log = gpu_check.Log(tmp_path / "x.log")
    steps: dict = {}

    def boom():
        raise ValueError("model file missing\nsecond line")

    gpu_check.run_step("a", boom, steps, log)
    gpu_check.run_step("b", lambda: {"value": 3}, steps, log)
    assert steps["a"]["status"] == "failed" and steps["a"]["reason"] == "ValueError: model file missing"
    assert steps["b"] == {"value": 3, "status": "ok", "seconds": steps["b"]["seconds"]}
    assert "----- a: failed" in (tmp_path / "x.log").read_text()


def test_subprocess_timeout_and_exit_codes_become_reasons(tmp_path):
    log = gpu_check.Log(tmp_path / "x.log")
    slow = gpu_check.run_cmd([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"], 1, log)
    assert slow["timed_out"] and slow["exit_code"] is None
    assert gpu_check.status_of(slow, "pytest")["reason"].startswith("pytest timed out after")
    bad = gpu_check.run_cmd([sys.executable, "-c", "import sys; print('{\"a\": 1}'); sys.exit('no data')"], 30, log)
    st = gpu_check.status_of(bad, "pipeline")
    assert bad["exit_code"] == 1 and st == {"status": "failed", "reason": "pipeline exited 1: no data"}
    assert gpu_check.json_rows(bad["tail"]) == [{"a": 1}]
    assert "started" in (tmp_path / "x.log").read_text()


def test_junit_counts(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="t" name="a"/><testcase classname="t" name="b">'
                   '<failure message="x"/></testcase><testcase classname="t" name="c"><skipped/></testcase>'
                   "</testsuite></testsuites>")
    assert gpu_check.junit_counts(xml) == {"tests": 3, "passed": 1, "failed": 1, "skipped": 1, "failures": ["t::b"]}
    assert gpu_check.junit_counts(tmp_path / "missing.xml") == {}


def test_resnet56_overrides_are_valid_config_keys():
    from pipeline.config import load_config

    cfg = load_config(ROOT / "configs" / "resnet56_cifar10_gpu.yaml",
                      ["baseline.checkpoint=", "run.device=cpu", *gpu_check.RESNET56_OVERRIDES, "export.latency_batches=[1,32]"])
    assert cfg.train.batch_size == 256 and cfg.prune.steps.max_iterations == 1 and not cfg.checks.require_speedup


def test_summary_reads_the_headline_numbers():
    steps = {"epoch_timings": {"status": "ok", "rows": [{"model": "resnet20", "images_per_s": 40000.0},
                                                        {"model": "resnet56", "images_per_s": 20000.0, "epoch_seconds_projected": 2.25}]},
             "compiled_timing": {"status": "ok", "rows": [{"model": "resnet56", "images_per_s": 36000.0,
                                                           "epoch_seconds_projected": 1.25}]},
             "parallel": {"status": "failed", "images_per_s": [5000.0, 5100.0]}, "smoke_pipeline": {"status": "skipped"}}
    s = gpu_check.summarize(steps)
    assert s["resnet20_img_s"] == 40000.0 and s["resnet56_s_per_epoch_compiled"] == 1.25 and s["resnet56_target_met"]
    assert s["failed_steps"] == ["parallel"] and s["skipped_steps"] == ["smoke_pipeline"]


@pytest.mark.slow
def test_dry_run_writes_json_and_log(tmp_path):
    """The real plumbing on the CPU: cuda tests (all skipped here), the timing step and 2 parallel timings."""
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out-dir", str(tmp_path), "--parallel", "2",
                           "--only", "cuda_tests", "epoch_timings", "parallel", "compiled_timing"],
                          cwd=ROOT, capture_output=True, text=True, env=gpu_check.child_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (js,) = tmp_path.glob("*-gpu-check-dry-run.json")
    (lg,) = tmp_path.glob("*-gpu-check-dry-run.log")
    r = json.loads(js.read_text())
    assert r["schema"] == "gpu-check/1" and r["dry_run"] is True and set(r["steps"]) == {"cuda_tests", "epoch_timings", "parallel",
                                                                                        "compiled_timing"}
    tests = r["steps"]["cuda_tests"]
    assert tests["status"] == "ok" and tests["tests"] >= 5 and tests["skipped"] == tests["tests"]
    (row,) = r["steps"]["epoch_timings"]["rows"]
    assert row["model"] == "resnet20" and row["images_per_s"] > 0 and row["speed"]["device"] == "cpu"
    par = r["steps"]["parallel"]
    assert par["status"] == "ok" and len(par["images_per_s"]) == 2 and all(x > 0 for x in par["images_per_s"])
    assert r["steps"]["compiled_timing"]["status"] == "skipped"
    assert r["summary"]["failed_steps"] == [] and r["dependencies"]["torch"] and r["gpu"] == {"dry_run": True}
    assert "===== parallel =====" in lg.read_text()
