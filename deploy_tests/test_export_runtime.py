"""Runners (one interface), input validation, the latency harness and runner comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ccpcsa.errors import UserError
from ccpcsa.models import build_model
from export.compare import compare_logits, compare_runners
from export.latency import latency_stats, measure_latency
from export.metadata import DeployMetadata
from export.onnx_export import export_onnx
from export.runtime import OrtRunner, Runner, TorchRunner, validate_batch


@pytest.fixture(scope="module")
def model_and_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10).eval()
    md = DeployMetadata(class_names=[f"c{i}" for i in range(10)], mean=[0.5] * 3, std=[0.25] * 3)
    return model, export_onnx(model, tmp_path_factory.mktemp("rt") / "m.onnx", md).path


@pytest.fixture(scope="module")
def runners(model_and_onnx: tuple[torch.nn.Module, Path]) -> list[Runner]:
    model, path = model_and_onnx
    return [TorchRunner(model), OrtRunner(path, threads=1)]


def x(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def test_runner_info_and_shared_interface(runners: list[Runner], model_and_onnx: tuple[torch.nn.Module, Path]) -> None:
    torch_runner, ort_runner = runners
    assert torch_runner.info.format == "torch" and torch_runner.info.device == "cpu"
    assert torch_runner.info.threads == torch.get_num_threads()
    assert ort_runner.info.format == "onnx" and ort_runner.info.precision == "fp32"
    assert ort_runner.info.threads == 1 and ort_runner.info.extra["providers"] == ["CPUExecutionProvider"]
    assert OrtRunner(model_and_onnx[1], threads=2).info.threads == 2
    for r in runners:
        out = r.run(x(3))
        r.synchronize()  # no-op on CPU, but part of the interface
        assert out.shape == (3, 10) and out.dtype == np.float32
        assert r.info.input_chw == (3, 32, 32)
        assert set(r.info.to_dict()) >= {"format", "precision", "device", "threads", "label"}


BAD_INPUTS = [
    (np.zeros((3, 32, 32), np.float32), "4 dims", "got 3 dims"),
    (np.zeros((2, 32, 32, 3), np.float32), "3 channels", "(2, 32, 32, 3)"),
    (np.zeros((2, 1, 32, 32), np.float32), "3 channels", "(2, 1, 32, 32)"),
    (np.zeros((2, 3, 64, 64), np.float32), "32x32", "(2, 3, 64, 64)"),
    (np.zeros((2, 3, 32, 32), np.uint8), "float32", "uint8"),
    (np.zeros((2, 3, 32, 32), np.int64), "float32", "int64"),
    (np.zeros((0, 3, 32, 32), np.float32), "N >= 1", "empty"),
    (torch.zeros(2, 3, 32, 32), "numpy.ndarray", "Tensor"),
]


@pytest.mark.parametrize(("batch", "expected", "got"), BAD_INPUTS)
def test_bad_inputs_are_one_line_errors(runners: list[Runner], batch: object, expected: str, got: str) -> None:
    for r in runners:
        with pytest.raises(UserError) as exc:
            r.run(batch)  # type: ignore[arg-type]
        msg = str(exc.value)
        assert "\n" not in msg and expected in msg and got in msg and r.info.name in msg


def test_float64_and_float16_are_cast(runners: list[Runner]) -> None:
    ref = runners[1].run(x(2))
    for dtype in (np.float64, np.float16):
        out = runners[1].run(x(2).astype(dtype))
        assert out.dtype == np.float32
        assert np.abs(out - ref).max() < (1e-4 if dtype == np.float64 else 0.1)
    assert validate_batch(x(2)[:, :, ::2, ::2].repeat(2, 2).repeat(2, 3), (3, 32, 32), who="t").flags.c_contiguous


def test_max_batch_enforced() -> None:
    with pytest.raises(UserError, match="batch of 9 exceeds the maximum of 8"):
        validate_batch(x(9), (3, 32, 32), who="engine", max_batch=8)


def test_bad_runner_arguments(model_and_onnx: tuple[torch.nn.Module, Path]) -> None:
    _, path = model_and_onnx
    with pytest.raises(UserError, match="threads must be >= 1"):
        OrtRunner(path, threads=0)
    with pytest.raises(UserError, match="unknown device"):
        OrtRunner(path, device="tpu")
    with pytest.raises(UserError, match="CUDAExecutionProvider"):
        OrtRunner(path, device="cuda")
    with pytest.raises(UserError, match="does not exist"):
        OrtRunner(path.with_name("nope.onnx"))


def test_latency_stats_math() -> None:
    s = latency_stats([1.0, 2.0, 3.0, 4.0, 5.0], batch_size=10, warmup=2)
    assert s.p50_ms == 3.0 and s.mean_ms == 3.0 and s.min_ms == 1.0 and s.max_ms == 5.0
    assert s.p90_ms == pytest.approx(4.6) and s.p99_ms == pytest.approx(4.96)
    assert s.images_per_s == pytest.approx(10 * 1000 / 3.0)
    assert s.iterations == 5 and s.warmup == 2
    with pytest.raises(ValueError):
        latency_stats([], 1)


def test_latency_harness_same_for_every_runner(runners: list[Runner]) -> None:
    for r in runners:
        rep = measure_latency(r, batch_sizes=(1, 4), warmup=1, iters=4, max_seconds=None)
        assert [s.batch_size for s in rep.results] == [1, 4]
        assert rep.threads == r.info.threads and rep.runner["format"] == r.info.format
        for s in rep.results:
            assert s.iterations == 4 and s.warmup == 1
            assert 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.p95_ms <= s.p99_ms <= s.max_ms
            assert s.images_per_s == pytest.approx(s.batch_size * 1000 / s.mean_ms)
        assert rep.to_dict()["results"][1]["batch_size"] == 4
        assert rep.by_batch(4).batch_size == 4
    # time-bounded: stops after min_iters once max_seconds is spent
    rep = measure_latency(runners[1], batch_sizes=(1,), warmup=0, iters=10_000, max_seconds=0.0, min_iters=3)
    assert rep.results[0].iterations == 3
    with pytest.raises(UserError):
        measure_latency(runners[1], batch_sizes=(0,))


def test_compare_logits_math() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    b = np.array([[1.5, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 3.0]])
    c = compare_logits(a, b, np.array([0, 1, 1, 1]), name_a="A", name_b="B")
    assert c.n == 4 and c.max_abs_diff == 2.0 and c.mean_abs_diff == pytest.approx(2.5 / 8)
    assert c.top1_agreement_pct == 75.0 and c.accuracy_a_pct == 75.0 and c.accuracy_b_pct == 100.0
    assert c.to_dict()["name_a"] == "A"
    with pytest.raises(UserError):
        compare_logits(a, b[:3])


def test_compare_runners_torch_vs_onnx(runners: list[Runner]) -> None:
    xs, ys = x(20, seed=3), np.arange(20) % 10
    c = compare_runners(runners[0], runners[1], xs, ys, batch_size=8)
    assert c.n == 20 and c.max_abs_diff <= 1e-4 and c.top1_agreement_pct == 100.0
    assert c.accuracy_a_pct == c.accuracy_b_pct and c.name_a == "torch/fp32@cpu" and c.name_b == "onnx/fp32@cpu"
    with pytest.raises(UserError, match="y has 3"):
        compare_runners(runners[0], runners[1], xs, ys[:3])
