"""TensorRT step: skipped without TensorRT/GPU, sidecar checks, trtexec lines, mypy on the module.

No fake TensorRT objects: where TensorRT and a GPU exist, the real build/run path is tested;
elsewhere the engine step must report ``skipped`` with a reason.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ccpcsa.errors import UserError
from ccpcsa.models import build_model
from export.metadata import DeployMetadata
from export.onnx_export import export_onnx
from export.quantize import quantize_int8
from export.runtime import OrtRunner
from export.tensorrt import (
    BatchProfile,
    EngineResult,
    TrtRunner,
    build_engine,
    check_sidecar,
    load_sidecar,
    sidecar_path_for,
    tensorrt_unavailable_reason,
    trtexec_commands,
    write_trtexec_script,
)

ROOT = Path(__file__).resolve().parents[1]
TRT_REASON = tensorrt_unavailable_reason()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    md = DeployMetadata(class_names=[f"c{i}" for i in range(10)], mean=[0.5] * 3, std=[0.25] * 3, run_id="trt")
    return export_onnx(build_model("resnet20", num_classes=10), tmp_path_factory.mktemp("trt") / "m.onnx", md).path


@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT and a GPU are present: the real build test runs instead")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_step_is_skipped_with_reason(onnx_model: Path, tmp_path: Path, precision: str) -> None:
    res = build_engine(onnx_model, tmp_path / "m.engine", precision=precision)
    assert res.status == "skipped" and not res.ok
    assert res.reason and ("TensorRT" in res.reason or "GPU" in res.reason)
    assert res.engine_path is None and not (tmp_path / "m.engine").exists()
    json.dumps(res.to_dict())  # serializable for run reports
    res.raise_for_failure()  # skipped is not a failure


def test_engine_step_int8_skipped_from_qdq(onnx_model: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32), dtype=np.float32)
    q = quantize_int8(onnx_model, tmp_path / "m.int8.onnx", x).path
    res = build_engine(q, tmp_path / "m_int8.engine", precision="int8")
    assert res.status == ("skipped" if TRT_REASON else "ok"), res.reason


@pytest.mark.skipif(TRT_REASON is not None, reason=f"needs TensorRT and a CUDA GPU: {TRT_REASON}")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_build_and_run_matches_onnxruntime(onnx_model: Path, tmp_path: Path, precision: str) -> None:
    res = build_engine(onnx_model, tmp_path / f"m_{precision}.engine", precision=precision, profile=BatchProfile(1, 8, 16))
    assert res.ok, res.reason
    assert res.engine_path is not None and res.engine_path.is_file()
    side = load_sidecar(res.engine_path)
    assert side["precision"] == precision and side["profile"]["max"] == [16, 3, 32, 32]
    runner = TrtRunner(res.engine_path)
    ref = OrtRunner(onnx_model, threads=1)
    for n in (1, 7):
        x = np.random.default_rng(n).standard_normal((n, 3, 32, 32), dtype=np.float32)
        tol = 1e-3 if precision == "fp32" else 5e-2
        assert np.abs(runner.run(x) - ref.run(x)).max() <= tol
    with pytest.raises(UserError, match="exceeds the maximum of 16"):
        runner.run(np.zeros((17, 3, 32, 32), np.float32))


# ---------------------------------------------------------------------------------------------
# Sidecar checks (pure functions, no TensorRT needed)

SIDECAR = {"tensorrt_version": "10.3.0", "gpu": "Orin (nvgpu)", "precision": "fp16"}


def test_check_sidecar_accepts_match() -> None:
    check_sidecar(SIDECAR, trt_version="10.3.0", gpu_name="Orin (nvgpu)")


def test_check_sidecar_version_mismatch_names_both() -> None:
    with pytest.raises(UserError) as exc:
        check_sidecar(SIDECAR, trt_version="10.13.0.35", gpu_name="Orin (nvgpu)", engine="engine 'm.engine'")
    msg = str(exc.value)
    assert "10.3.0" in msg and "10.13.0.35" in msg and "m.engine" in msg and "\n" not in msg
    assert "GPU" not in msg


def test_check_sidecar_gpu_mismatch_names_both() -> None:
    with pytest.raises(UserError) as exc:
        check_sidecar(SIDECAR, trt_version="10.3.0", gpu_name="NVIDIA H100 80GB HBM3")
    msg = str(exc.value)
    assert "Orin (nvgpu)" in msg and "NVIDIA H100 80GB HBM3" in msg and "rebuild" in msg


def test_check_sidecar_both_mismatch_and_missing_keys() -> None:
    with pytest.raises(UserError) as exc:
        check_sidecar(SIDECAR, trt_version="10.0.1", gpu_name="RTX 4090")
    assert all(s in str(exc.value) for s in ("10.3.0", "10.0.1", "Orin (nvgpu)", "RTX 4090"))
    with pytest.raises(UserError, match="sidecar lacks gpu"):
        check_sidecar({"tensorrt_version": "10.3.0"}, trt_version="10.3.0", gpu_name="x")


def test_engine_without_or_with_bad_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00not-a-plan")
    with pytest.raises(UserError, match="has no sidecar"):
        TrtRunner(engine)
    sidecar_path_for(engine).write_text("{truncated", encoding="utf-8")
    with pytest.raises(UserError, match="not valid JSON"):
        load_sidecar(engine)
    with pytest.raises(UserError, match="does not exist"):
        TrtRunner(tmp_path / "missing.engine")


def test_engine_not_matching_its_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"new engine bytes")
    sidecar_path_for(engine).write_text(json.dumps({**SIDECAR, "engine_sha256": "0" * 64}), encoding="utf-8")
    with pytest.raises(UserError, match="does not match its sidecar"):
        TrtRunner(engine)


@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT present")
def test_trt_runner_without_tensorrt_is_a_user_error(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00")
    sidecar_path_for(engine).write_text(json.dumps(SIDECAR), encoding="utf-8")
    with pytest.raises(UserError, match="cannot run engine 'm.engine'"):
        TrtRunner(engine)


def test_build_engine_bad_input(onnx_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown TensorRT precision"):
        build_engine(onnx_model, tmp_path / "m.engine", precision="int4")
    with pytest.raises(UserError, match="no Q/DQ nodes"):
        build_engine(onnx_model, tmp_path / "m.engine", precision="int8")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(onnx_model.read_bytes()[:500])
    with pytest.raises(UserError, match="bad.onnx"):
        build_engine(bad, tmp_path / "m.engine")
    with pytest.raises(UserError, match="min <= opt <= max"):
        BatchProfile(4, 2, 8)
    with pytest.raises(UserError):
        EngineResult(status="failed", reason="TensorRT ONNX parser rejected 'x.onnx': boom").raise_for_failure()


# ---------------------------------------------------------------------------------------------
# trtexec command lines (usable without TensorRT)


def test_trtexec_commands_share_profile(tmp_path: Path) -> None:
    cmds = trtexec_commands("bundle/m.sim.onnx", "bundle/m.int8.onnx", profile=BatchProfile(1, 16, 32), workspace_mb=2048)
    assert set(cmds) == {"fp16", "int8"}
    fp16, int8 = cmds["fp16"], cmds["int8"]
    assert fp16.startswith("trtexec --onnx=bundle/m.sim.onnx ") and "--saveEngine=bundle/model.fp16.engine" in fp16
    assert "--saveEngine=bundle/model.int8.engine" in int8
    assert "--int8" in int8 and "--onnx=bundle/m.int8.onnx" in int8 and "--int8" not in fp16 and "--fp16" in fp16
    for flag in ("--minShapes=input:1x3x32x32", "--optShapes=input:16x3x32x32", "--maxShapes=input:32x3x32x32",
                 "--memPoolSize=workspace:2048M", "--timingCacheFile=timing.cache"):
        assert flag in fp16 and flag in int8
    script = write_trtexec_script(tmp_path / "build_engines.sh", cmds)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and fp16 in text and int8 in text
    assert script.stat().st_mode & 0o111
    # only the fp16 line without an INT8 model; quoting of odd paths
    only = trtexec_commands("my models/m.onnx", input_chw=(3, 64, 48))
    assert set(only) == {"fp16"} and "'--onnx=my models/m.onnx'" in only["fp16"]
    assert re.search(r"--optShapes=input:32x3x64x48\b", only["fp16"])


# ---------------------------------------------------------------------------------------------
# Type checking


def _mypy() -> list[str]:
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mypy is not installed in this environment")
    return [sys.executable, "-m", "mypy", "--no-error-summary", "--hide-error-context"]


@pytest.mark.slow
def test_mypy_tensorrt_module_against_real_stubs(tmp_path: Path) -> None:
    """`make typecheck`'s real check: patched tensorrt-stubs resolve and export/tensorrt/ type-checks."""
    _mypy()
    from export.typecheck import run

    try:
        code, out = run(tmp_path)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert code == 0, out
