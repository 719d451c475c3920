"""The whole chain on the smoke config: artifacts, resume, re-run rules, gates, report schema, bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import jsonschema
import pytest

from pipeline.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def _run(run_dir: Path, *extra: str) -> int:
    return main(["run", "--config", SMOKE, "--run-dir", str(run_dir), "--no-progress", *extra])


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    assert _run(run_dir) == 0
    return run_dir


def test_full_chain_artifacts_and_report(smoke_run):
    m = _manifest(smoke_run)
    names = ["baseline", "attention", "prune", "onnx", "simplify", "int8", "int8_cpu", "engine", "validate", "report", "bundle"]
    assert list(m["stages"]) == names
    for n in names:
        st = m["stages"][n]
        if n == "engine":
            assert st["status"] == "skipped" and st["reason"]  # no TensorRT / GPU here, and it says why
        else:
            assert st["status"] == "ok", (n, st["reason"])
        for rel, digest in st["outputs"].items():
            assert (smoke_run / rel).is_file() and len(digest) == 64
    report = json.loads((smoke_run / "report.json").read_text())
    schema = json.loads((ROOT / "pipeline" / "report_schema.json").read_text())
    jsonschema.validate(report, schema)
    fmts = {f["name"]: f for f in report["formats"]}
    assert fmts["pytorch_pruned"]["flops"] < fmts["pytorch_baseline"]["flops"]
    assert fmts["onnx"]["max_abs_diff"] <= 1e-3 and fmts["int8"]["top1_agreement"] >= 90
    assert fmts["int8_cpu"]["top1_agreement"] >= 90 and fmts["int8_cpu"]["file"] == "model.int8.cpu.onnx"
    assert m["stages"]["int8_cpu"]["metrics"]["activations"] == "uint8" and m["stages"]["int8"]["metrics"]["activations"] == "int8"
    md = (smoke_run / "report.md").read_text()
    assert "| ONNX simplified |" in md and "TensorRT" in md
    # the fine-tunes' precision follows this CPU (train.amp defaults to true): bf16 only with native bf16
    import torch

    from ccpcsa import placement

    said = m["stages"]["prune"]["metrics"]["train_precision"]
    bf16 = placement.amp_dtype(torch.device("cpu"), True)[0] is not None
    assert said.startswith("bfloat16 autocast (CPU with" if bf16 else "float32 (this CPU has no native bf16")
    assert said == placement.amp_label(torch.device("cpu"), True) and f"Fine-tunes trained in {said}" in md
    assert {p.name for p in (smoke_run / "plots").glob("*.png")} >= {"pruning_trajectory.png", "channels_per_layer.png",
                                                                   "latency_accuracy_per_format.png"}


def test_rerun_does_nothing(smoke_run, capsys):
    before = _manifest(smoke_run)
    assert _run(smoke_run) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == 11
    assert _manifest(smoke_run)["stages"] == before["stages"]


def test_changed_prune_reruns_prune_and_after(smoke_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(smoke_run, run)
    assert _run(run, "--set", "prune.target.flops_reduction=0.4") == 0
    out = capsys.readouterr().out
    for n in ("baseline", "attention"):
        assert f"── {n}: up to date" in out
    for n in ("prune", "onnx", "simplify", "int8", "int8_cpu", "validate", "report", "bundle"):
        assert f"══ stage {n} " in out
    assert _manifest(run)["stages"]["prune"]["metrics"]["flops_reduction"] >= 0.3995


def test_changed_gate_regates_prune_without_retraining(smoke_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "regate"
    shutil.copytree(smoke_run, run)
    pruned = (run / "pruned.pt").read_bytes()
    assert _run(run, "--set", "checks.max_accuracy_drop=60") == 0
    out = capsys.readouterr().out
    assert "── prune: work up to date, checks re-evaluated" in out and "══ stage prune " not in out
    assert "── attention: up to date" in out and (run / "pruned.pt").read_bytes() == pruned
    rec = _manifest(run)["stages"]["prune"]
    assert rec["status"] == "ok" and [c["threshold"] for c in rec["checks"] if c["name"] == "accuracy_drop_pp"] == [60.0]
    assert rec["metrics"]["baseline_accuracy"] - rec["metrics"]["accuracy"] == rec["checks"][0]["value"]


def test_forced_gate_failure_stops_and_keeps_artifacts(smoke_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "gate"
    shutil.copytree(smoke_run, run)
    kept = {p: (run / p).read_bytes() for p in ("baseline.pt", "pruned.pt")}
    rc = _run(run, "--set", "checks.max_abs_diff=0", "--from", "onnx")
    assert rc == 1
    err = capsys.readouterr().err
    assert "stage onnx failed" in err and "max_abs_diff" in err
    m = _manifest(run)
    assert m["stages"]["onnx"]["status"] == "failed"
    assert not any(c["passed"] for c in m["stages"]["onnx"]["checks"] if c["name"] == "max_abs_diff")
    for p, data in kept.items():
        assert (run / p).read_bytes() == data


def test_bundle_infers_with_only_numpy_pillow_onnxruntime(smoke_run, tmp_path):
    with tarfile.open(smoke_run / "bundle.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    b = tmp_path / "bundle"
    assert {"infer.py", "labels.json", "build_engine.sh", "model.sim.onnx", "model.int8.onnx", "model.int8.cpu.onnx"} <= {p.name for p in b.iterdir()}
    assert "--int8" in (b / "build_engine.sh").read_text() and "--fp16" in (b / "build_engine.sh").read_text()
    import numpy as np
    from PIL import Image

    imgs = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype("uint8")).save(p)
        imgs.append(str(p))
    blockers = tmp_path / "block"
    blockers.mkdir()
    for mod in ("torch", "ccpcsa", "export", "pipeline", "torch_pruning"):
        (blockers / f"{mod}.py").write_text("raise ImportError('not available on the edge device')\n")
    env = {**os.environ, "PYTHONPATH": str(blockers)}
    for model in ("model.sim.onnx", "model.int8.onnx", "model.int8.cpu.onnx"):
        proc = subprocess.run([sys.executable, str(b / "infer.py"), *imgs, "--model", str(b / model)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("%") >= 3 and "latency:" in proc.stdout


def test_bad_inputs_one_line(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["run", "--config", SMOKE, "--set", "prune.criterion.name=nope", "--run-dir", str(tmp_path / "r")]) == 2
    assert main(["run", "--config", SMOKE, "--from", "prunee", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "did you mean 'prune'" in err[2]
