"""On-device validation in the bundle (issue #36, item 4): what the bundle holds, ``infer.py`` and
``validate_on_device.py`` run from the unpacked bundle with numpy, pillow and the runtime only (torch and the project
blocked), and ``python -m pipeline report --device-result`` bringing the result back into the run.

One quick smoke run (module fixture, ~20 s) feeds every test; the scripts run as subprocesses from another working
directory, the way a user runs them on the device. Accuracies are compared with a direct onnxruntime / OpenVINO
session on the same images (equality of the counts), not merely checked for presence.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from export.edge.sessions import installed
from pipeline.__main__ import main as pipeline_main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
QUICK = ["--set", "train.max_steps_per_epoch=4", "--set", "train.epochs=1", "--set", "attention.epochs=0",
         "--set", "prune.steps.max_iterations=1", "--set", "export.speedup_rounds=3", "--set", "export.latency_iters=2",
         "--set", "export.calibration_images=16", "--set", "checks.eval_images=60", "--set", "checks.min_agreement_int8=0",
         "--set", "checks.min_agreement_lowp=0", "--set", "checks.max_accuracy_drop=100"]
PER_CLASS = 4
BATCHES = ["1", "4"]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): _sha(p) for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("edge-run")
    assert pipeline_main(["run", "--config", SMOKE, "--run-dir", str(d), "--no-progress", *QUICK]) == 0
    return d


@pytest.fixture(scope="module")
def bundle(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(run / "bundle.tar.gz") as tar:
        tar.extractall(d, filter="data")
    return d / "bundle"


@pytest.fixture(scope="module")
def images(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """An ImageFolder of PNGs (PER_CLASS per class) cut from the synthetic test split → (folder, uint8 NHWC images in
    the order the script reads them — class folders sorted, files sorted —, labels)."""
    from ccpcsa.data import load_data

    d = tmp_path_factory.mktemp("images")
    data = load_data("synthetic:1200:300", seed=0, cache_dir=d / "cache", progress=False)
    classes = json.loads((bundle / "labels.json").read_text())["classes"]
    root = d / "folder"
    for c in range(len(classes)):
        (root / classes[c]).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(data.test.labels == c)[:PER_CLASS]):
            Image.fromarray(data.test.images[i]).save(root / classes[c] / f"img{k}.png")
    order = [(classes.index(sub.name), f) for sub in sorted(root.iterdir()) for f in sorted(sub.iterdir())]
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB")) for _, f in order])
    return root, imgs, np.array([c for c, _ in order])


def _edge_env(tmp: Path) -> dict[str, str]:
    """PYTHONPATH with modules that refuse to import: the scripts must not need torch or the project."""
    blockers = tmp / "block"
    blockers.mkdir(exist_ok=True)
    for mod in ("torch", "ccpcsa", "export", "pipeline", "torch_pruning"):
        (blockers / f"{mod}.py").write_text("raise ImportError('not available on the edge device')\n")
    return {**os.environ, "PYTHONPATH": str(blockers)}


def _script(bundle: Path, name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(bundle / name), *args], cwd=cwd, env=_edge_env(cwd), capture_output=True,
                          text=True, timeout=180)


def _direct_correct(runtime: str, model: Path, x: np.ndarray, y: np.ndarray) -> int:
    """Correct top-1 count of ``model`` on ``x`` through the runtime's own API (not sessions.py)."""
    if runtime == "onnxruntime-cpu":
        import onnxruntime as ort

        s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        logits = s.run(None, {s.get_inputs()[0].name: x})[0]
    else:
        import openvino as ov

        core = ov.Core()
        m = core.read_model(str(model))
        m.reshape({m.inputs[0]: list(x.shape)})
        logits = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x})[0]
    return int((np.asarray(logits).argmax(1) == y).sum())


# ---------------------------------------------------------------------------------------------
# the bundle


def test_bundle_members_and_promise(run: Path, bundle: Path) -> None:
    names = {p.name for p in bundle.iterdir()}
    expected = {"model.sim.onnx", "model.int8.onnx", "model.int8.cpu.onnx", "baseline.sim.onnx", "baseline.int8.cpu.onnx",
                "baseline.int8.onnx", "labels.json", "promise.json", "build_engine.sh", "infer.py", "validate_on_device.py", "sessions.py",
                "timing.py", "README.md", "requirements-onnxruntime.txt", "requirements-openvino.txt",
                "requirements-tensorrt.txt"}
    if (ROOT / "export" / "edge" / "target_probe.py").is_file():
        expected.add("target_probe.py")
    assert names == expected
    for n in ("model.sim.onnx", "model.int8.onnx", "model.int8.cpu.onnx", "baseline.sim.onnx", "baseline.int8.cpu.onnx",
              "baseline.int8.onnx"):
        assert _sha(bundle / n) == _sha(run / n), n  # the run's very files
    for n in ("infer.py", "validate_on_device.py", "sessions.py", "timing.py"):
        assert (bundle / n).read_bytes() == (ROOT / "export" / "edge" / n).read_bytes(), n
    manifest = json.loads((run / "manifest.json").read_text())
    promise = json.loads((bundle / "promise.json").read_text())
    v = manifest["stages"]["validate"]["metrics"]
    assert (promise["run"], promise["config_hash"]) == (manifest["run"], manifest["config_hash"])
    assert promise["classes"] == json.loads((bundle / "labels.json").read_text())["classes"]
    assert promise["checks"] == {"max_accuracy_drop_pp": 100.0}
    arts = {a["file"]: a for a in promise["artifacts"]}
    assert arts["model.sim.onnx"]["reference"] == "baseline.sim.onnx" and arts["model.sim.onnx"]["precision"] == "fp32"
    assert arts["model.int8.cpu.onnx"]["reference"] == "baseline.int8.cpu.onnx"
    assert "tensorrt" not in arts["model.sim.onnx"]["runtimes"] and arts["model.int8.engine"]["runtimes"] == ["tensorrt"]
    assert "model.int8.onnx" not in arts and "NOT a CPU model" in promise["files"]["model.int8.onnx"]
    expected_speedups = v.get("speedups") or {"onnxruntime-cpu": {"fp32": v["speedup"], "int8": v["speedup_int8"]}}
    assert promise["speedup"] == expected_speedups and set(promise["speedup"]["onnxruntime-cpu"]["fp32"]) == {"1", "8"}
    assert promise["accuracy"]["onnx_simplified"]["accuracy"] == v["formats"]["onnx_simplified"]["accuracy"]
    # every model file the bundle names is a file name of report.json's formats (engines included)
    report_files = {f.get("file") for f in json.loads((run / "report.json").read_text())["formats"]}
    assert {*arts, "model.int8.onnx"} <= report_files
    script = (bundle / "build_engine.sh").read_text()
    assert "--saveEngine=model.fp16.engine" in script and "--saveEngine=model.int8.engine" in script
    # each engine has its unpruned reference, built on the device from the unpruned model quantized the same way
    assert "--onnx=baseline.sim.onnx --saveEngine=baseline.fp16.engine" in script
    assert "--onnx=baseline.int8.onnx --saveEngine=baseline.int8.engine" in script
    assert (arts["model.fp16.engine"]["reference"], arts["model.fp16.engine"]["reference_built_from"]) == \
        ("baseline.fp16.engine", "baseline.sim.onnx")
    assert (arts["model.int8.engine"]["reference"], arts["model.int8.engine"]["reference_built_from"]) == \
        ("baseline.int8.engine", "baseline.int8.onnx")
    ops = {n.op_type for n in __import__("onnx").load(str(bundle / "baseline.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "QLinearConv" not in ops
    readme = (bundle / "README.md").read_text()
    for n in expected - {"README.md"}:
        assert f"`{n}`" in readme, n
    assert "--device-result result.json" in readme and "NOT a CPU model" in readme
    assert (bundle / "requirements-onnxruntime.txt").read_text().split()[:3] == ["numpy", "pillow", "onnxruntime"]


def test_infer_from_another_directory(bundle: Path, images: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    folder = images[0]
    files = sorted(str(p) for p in folder.rglob("*.png"))[:3]
    classes = json.loads((bundle / "labels.json").read_text())["classes"]
    proc = _script(bundle, "infer.py", *files, "--model", "model.int8.cpu.onnx", "--iters", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and all(any(c in line for c in classes) and "%" in line for line in lines[:3])
    assert lines[3].startswith("latency: p50 ") and "5 timed calls" in lines[3] and "model.int8.cpu.onnx on onnxruntime-cpu" in lines[3]
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"not a png")
    for args, words in [((str(tmp_path / "missing.png"),), "does not exist"), ((str(bad_png),), "cannot read image"),
                        ((files[0], "--model", "nope.onnx"), "model file 'nope.onnx' not found"),
                        ((files[0], "--runtime", "bogus-cpu"), "unknown runtime")]:
        proc = _script(bundle, "infer.py", *args, cwd=tmp_path)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], (args, proc.stderr)


# ---------------------------------------------------------------------------------------------
# validate_on_device.py


@pytest.fixture(scope="module")
def results(bundle: Path, images: tuple[Path, np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """validate_on_device.py on both CPU runtimes → {runtime: (exit code, stdout, result dict, path)}."""
    out = {}
    cwd = tmp_path_factory.mktemp("device")
    for runtime in ("onnxruntime-cpu", "openvino-cpu"):
        if not installed(runtime):
            continue
        path = cwd / f"{runtime}.json"
        proc = _script(bundle, "validate_on_device.py", "--images", str(images[0]), "--runtime", runtime, "--batch", *BATCHES,
                       "--threads", "1", "--rounds", "3", "--round-seconds", "0.01", "--out", str(path), cwd=cwd)
        assert proc.returncode in (0, 1), proc.stderr
        out[runtime] = (proc.returncode, proc.stdout, json.loads(path.read_text()), path)
    return out


@pytest.mark.parametrize("runtime", ["onnxruntime-cpu", "openvino-cpu"])
def test_validate_on_device_measures_what_a_direct_session_does(runtime: str, results: dict[str, Any], bundle: Path, run: Path,
                                                               images: tuple[Path, np.ndarray, np.ndarray]) -> None:
    if runtime not in results:
        pytest.skip(f"{runtime} is not installed")
    rc, stdout, r, _ = results[runtime]
    _, imgs, labels = images
    meta = json.loads((bundle / "labels.json").read_text())
    x = ((imgs.astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - np.asarray(meta["mean"], np.float32)[:, None, None])
         / np.asarray(meta["std"], np.float32)[:, None, None]).astype(np.float32)
    manifest = json.loads((run / "manifest.json").read_text())
    assert r["format"] == "ccpcsa-device-result/1" and (r["run"], r["config_hash"]) == (manifest["run"], manifest["config_hash"])
    assert r["runtime"]["runtime"] == runtime and r["runtime"]["threads"] == 1 and r["threads"] == 1
    n = len(labels)
    assert r["images"]["count"] == n == 10 * PER_CLASS and r["images"]["folder"] == str(images[0].resolve())
    assert r["models"] == {f: _sha(bundle / f) for f in ("model.sim.onnx", "baseline.sim.onnx", "model.int8.cpu.onnx",
                                                          "baseline.int8.cpu.onnx")}
    rows = {a["file"]: a for a in r["artifacts"]}
    assert set(rows) == {"model.sim.onnx", "model.int8.cpu.onnx"}
    for f, a in rows.items():
        for key, file in (("", f), ("reference_", a["reference"])):
            correct = _direct_correct(runtime, bundle / file, x, labels)
            p = correct / n
            assert a[f"{key}accuracy"] == pytest.approx(100 * p, abs=1e-9), (f, file)
            assert a[f"{key}accuracy_n"] == n and a[f"{key}accuracy_se"] == pytest.approx(100 * math.sqrt(p * (1 - p) / n))
        assert set(a["speedup"]) == set(BATCHES) == set(a["latency_ms"]) == set(a["reference_latency_ms"])
        precision = a["precision"]
        for b, s in a["speedup"].items():
            assert s["speedup"] > 0 and s["se"] >= 0 and s["rounds"] == 3
            # a median of 3 paired ratios against the ratio of the medians: within 2× either way (under the other test
            # worker's load they differed by 1.7× once), while an inverted ratio (new / ref) would be off by 1 / speedup²
            assert 0.5 <= s["speedup"] / (s["ref_ms"] / s["new_ms"]) <= 2.0
            assert 0 < a["latency_ms"][b]["p50"] <= a["latency_ms"][b]["p95"]
            promised = (((json.loads((bundle / "promise.json").read_text())["speedup"].get(runtime) or {}).get(precision) or {})
                        .get(b) or {}).get("speedup")
            assert s["promised"] == promised
            if promised is not None:
                assert s["relative_error"] == pytest.approx(s["speedup"] / promised - 1)
    checks = {c["name"]: c for c in r["checks"]}
    drop = rows["model.sim.onnx"]["reference_accuracy"] - rows["model.sim.onnx"]["accuracy"]
    assert checks["model.sim.onnx_accuracy_drop_pp"]["value"] == pytest.approx(drop)
    assert checks["model.sim.onnx_accuracy_drop_pp"]["passed"] == (drop <= 100.0)
    for b in BATCHES:
        c = checks[f"model.int8.cpu.onnx_speedup_b{b}"]
        assert c["passed"] == (rows["model.int8.cpu.onnx"]["speedup"][b]["speedup"] > 1)
    assert r["passed"] == all(c["passed"] for c in r["checks"] if not c["informational"])
    assert rc == (0 if r["passed"] else 1)
    assert "model.sim.onnx (fp32): accuracy" in stdout and ("PASSED" in stdout) == r["passed"]


def test_validate_on_device_bad_inputs(bundle: Path, images: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    """Each mistake: exit 2, one ``error:`` line saying what is wrong, no result written."""
    folder = images[0]
    classes = json.loads((bundle / "labels.json").read_text())["classes"]
    cases: list[tuple[list[str], str, Path]] = []
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((["--images", str(tmp_path / "nowhere")], "does not exist", bundle))
    cases.append((["--images", str(empty)], "no class subfolders", bundle))
    wrong = tmp_path / "wrong"
    shutil.copytree(folder, wrong)
    (wrong / classes[0]).rename(wrong / "kitten")
    cases.append((["--images", str(wrong)], "'kitten'", bundle))
    noimg = tmp_path / "noimg"
    (noimg / classes[0]).mkdir(parents=True)
    (noimg / classes[0] / "notes.txt").write_text("x")
    cases.append((["--images", str(noimg)], "no images", bundle))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(folder, corrupt)
    (corrupt / classes[1] / "broken.png").write_bytes(b"\x89PNG broken")
    cases.append((["--images", str(corrupt)], "broken.png", bundle))
    if not installed("tensorrt"):
        cases.append((["--images", str(folder), "--runtime", "tensorrt"], "'tensorrt' is not installed", bundle))
    partial = tmp_path / "partial"
    shutil.copytree(bundle, partial)
    (partial / "baseline.int8.cpu.onnx").unlink()
    cases.append((["--images", str(folder)], "'baseline.int8.cpu.onnx' is missing", partial))
    for args, words, where in cases:
        out = tmp_path / "result.json"
        proc = _script(where, "validate_on_device.py", *args, "--out", str(out), cwd=tmp_path)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], (args, proc.stderr)
        assert not out.exists() and not list(tmp_path.glob(".result.json*"))
    assert "kitten" in _script(bundle, "validate_on_device.py", "--images", str(wrong), cwd=tmp_path).stderr


# ---------------------------------------------------------------------------------------------
# report --device-result


def test_report_adds_the_device_section(run: Path, results: dict[str, Any], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    _, _, r, path = results["onnxruntime-cpu"]
    assert pipeline_main(["report", "--run-dir", str(rd), "--device-result", str(path)]) == 0
    stored = list((rd / "device_results").glob("*.json"))
    assert [p.name.startswith("onnxruntime-cpu-") for p in stored] == [True]
    assert json.loads(stored[0].read_text()) == r
    md = (rd / "report.md").read_text()
    sim = next(a for a in r["artifacts"] if a["file"] == "model.sim.onnx")
    assert "## Results from the target device" in md and f"(`device_results/{stored[0].name}`)" in md
    assert f"| `model.sim.onnx` | {sim['accuracy']:.2f} ± {sim['accuracy_se']:.2f} | " in md
    assert f"{sim['speedup']['1']['speedup']:.2f}× ± {sim['speedup']['1']['se']:.2f}" in md
    rep = json.loads((rd / "report.json").read_text())
    assert rep["device_results"][0]["stored_as"] == f"device_results/{stored[0].name}"
    assert rep["device_results"][0]["artifacts"] == r["artifacts"]
    capsys.readouterr()
    # the report stage stays current: a plain re-run redoes nothing and keeps the section
    assert pipeline_main(["run", "--config", SMOKE, "--run-dir", str(rd), "--no-progress", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "── report: up to date" in out
    assert "## Results from the target device" in (rd / "report.md").read_text()


def test_report_refuses_a_foreign_or_broken_result(run: Path, results: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    _, _, r, _ = results["onnxruntime-cpu"]
    before = _tree(rd)

    def variant(name: str, obj: Any) -> Path:
        p = tmp_path / name
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return p

    other_sha = {**r, "models": {**r["models"], "model.sim.onnx": "0" * 64}}
    cases = [(tmp_path / "missing.json", "cannot read"), (variant("junk.json", "{not json"), "not valid JSON"),
             (variant("fmt.json", {**r, "format": "something/1"}), "not a device result"),
             (variant("keys.json", {k: v for k, v in r.items() if k != "artifacts"}), "malformed"),
             (variant("run.json", {**r, "run": "another-run"}), "another-run"),
             (variant("hash.json", {**r, "config_hash": "f" * 64}), "config hash"),
             (variant("sha.json", other_sha), "model.sim.onnx")]
    for path, words in cases:
        capsys.readouterr()
        assert pipeline_main(["report", "--run-dir", str(rd), "--device-result", str(path)]) == 2, path.name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (path.name, err)
        assert _tree(rd) == before, path.name


def test_the_prediction_for_the_target_is_checked_only_on_that_target() -> None:
    """promise.json's ``predicted`` (what a profile-driven run expected on the target it pruned for) is compared on that
    runtime, thread count, precision and batch only; validate's promise only at its own thread count."""
    from export.edge.validate_on_device import checks_for, predicted_for
    from pipeline.bundle import predicted_speedup

    stages = {"prune": {"metrics": {"latency": {"batch": 1, "final_speedup": 1.36},
                                    "target": {"name": "openvino-cpu", "label": "openvino-cpu on X, 1 threads",
                                               "precision": "int8", "identity": {"threads": 1}}}}}
    pred = predicted_speedup(stages)
    assert pred == {"runtime": "openvino-cpu", "threads": 1, "precision": "int8", "batch": 1, "speedup": 1.36,
                    "target": "openvino-cpu on X, 1 threads"}
    assert predicted_speedup({"prune": {"metrics": {"latency": {}, "target": {"name": "onnxruntime-cpu"}}}}) is None
    promise = {"predicted": pred}
    assert predicted_for(promise, "openvino-cpu", 1, "int8", 1) == 1.36
    for other in (("onnxruntime-cpu", 1, "int8", 1), ("openvino-cpu", 2, "int8", 1), ("openvino-cpu", 1, "fp32", 1),
                  ("openvino-cpu", 1, "int8", 32)):
        assert predicted_for(promise, *other) is None
    row = {"file": "model.int8.cpu.onnx", "speedup": {"1": {"speedup": 1.30, "relative_error": None, "within_tolerance": None,
                                                            "predicted": 1.36, "prediction_error": 1.30 / 1.36 - 1}}}
    check = {c["name"]: c for c in checks_for([row], 2.0, strict=True)}["model.int8.cpu.onnx_speedup_vs_prediction_b1"]
    assert check["passed"] and check["value"] == pytest.approx(-0.0441, abs=1e-4) and not check["informational"]
    row["speedup"]["1"]["prediction_error"] = 1.10 / 1.36 - 1  # 19 % short of the prediction
    check = {c["name"]: c for c in checks_for([row], 2.0, strict=False)}["model.int8.cpu.onnx_speedup_vs_prediction_b1"]
    assert not check["passed"] and check["informational"]
