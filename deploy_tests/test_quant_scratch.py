"""INT8 quantization's scratch folder lives in the run directory, never in /tmp, and a killed run's leftover is
removed by the next run (issue #16, item 6)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import export.quantize
from ccpcsa.io.checkpoint import ModelSpec, save_checkpoint
from deploy_tests.byo_model import tiny_net
from export.metadata import DeployMetadata
from export.onnx_export import export_onnx
from pipeline.__main__ import main as pipeline_main
from pipeline.manifest import clear_temp_files

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TINY = "deploy_tests.byo_model:tiny_net"


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    meta = DeployMetadata(class_names=[str(i) for i in range(10)], mean=(0.5,) * 3, std=(0.25,) * 3, run_id="scratch",
                          config_hash="0" * 64)
    return export_onnx(tiny_net(10, 8).eval(), tmp_path_factory.mktemp("fp32") / "model.onnx", meta).path


def test_quantization_scratch_is_beside_the_output(fp32_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    real = export.quantize.quantize_static

    def spy(model_input: str, *args: Any, **kwargs: Any) -> Any:
        seen["tempdir"] = Path(tempfile.gettempdir())  # where onnxruntime's own TemporaryDirectory goes
        seen["input"] = Path(model_input)
        seen["listing"] = sorted(p.name for p in tmp_path.iterdir())
        return real(model_input, *args, **kwargs)

    monkeypatch.setattr(export.quantize, "quantize_static", spy)
    before = tempfile.gettempdir()
    calib = np.random.default_rng(0).standard_normal((16, 3, 32, 32), dtype=np.float32)
    res = export.quantize.quantize_int8(fp32_onnx, tmp_path / "model.int8.onnx", calib, num_calibration=16)
    scratch = seen["tempdir"]
    assert scratch.parent == tmp_path and scratch.name.startswith(".model.int8.onnx.") and scratch.name.endswith(".quant.tmp")
    assert seen["input"] == scratch / "preprocessed.onnx"  # quant_pre_process's output too
    assert scratch.name in seen["listing"]
    # gone afterwards, the process's temp root restored, only the artifact left
    assert tempfile.gettempdir() == before and not scratch.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"] and res.path.is_file()


def test_killed_runs_scratch_folders_are_removed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    left = run / ".model.int8.onnx.k3j2_x.quant.tmp"
    (left / "ort.quant.abc").mkdir(parents=True)
    (left / "preprocessed.onnx").write_bytes(b"x" * 100)
    (left / "ort.quant.abc" / "augmented_model.onnx").write_bytes(b"y" * 100)
    (run / ".baseline.pt.q1w2.tmp").write_bytes(b"partial")
    (run / "model.onnx").write_bytes(b"artifact")
    (run / "keep.tmp").mkdir()  # not hidden: not a scratch folder of ours
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    (run / ".linked.quant.tmp").symlink_to(outside, target_is_directory=True)
    removed = clear_temp_files(run)
    assert {p.name for p in removed} == {left.name, ".baseline.pt.q1w2.tmp"}
    assert not left.exists() and (run / "model.onnx").read_bytes() == b"artifact" and (run / "keep.tmp").is_dir()
    assert (outside / "precious").read_text() == "keep"  # a symbolic link is never followed


def test_next_run_removes_the_leftover_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the data cache goes here
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "w.pt", tiny_net(10, 16), ModelSpec(TINY, 10, 32, {"width": 16}))
    run = tmp_path / "run"
    left = run / ".model.int8.onnx.zz9.quant.tmp"
    (left / "ort.quant.1").mkdir(parents=True)
    (left / "ort.quant.1" / "augmented_model.onnx").write_bytes(b"z" * 1000)
    assert pipeline_main(["run", "--config", SMOKE, "--run-dir", str(run), "--no-progress", "--until", "baseline",
                          "--set", f"baseline.checkpoint={ck}", "--set", "data.spec=synthetic:200:50"]) == 0
    assert "removed 1 temporary file(s) of an interrupted write: .model.int8.onnx.zz9.quant.tmp" in capsys.readouterr().out
    assert not left.exists() and (run / "baseline.pt").is_file()
