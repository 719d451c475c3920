"""INT8 static quantization to QDQ ONNX: runs on onnxruntime CPU, agrees with FP32, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ccpcsa.errors import UserError
from ccpcsa.models import build_model
from export.compare import compare_runners
from export.metadata import DeployMetadata, read_metadata
from export.onnx_export import export_onnx
from export.quantize import (
    NumpyCalibrationReader,
    int8_saturates,
    quantize_int8,
    resolve_reduce_range,
    tensorrt_flavour,
)
from export.runtime import OrtRunner
from export.simplify import simplify_onnx

DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg.tar.gz"


def small_cnn(num_classes: int = 10) -> nn.Sequential:
    """Three conv-BN-ReLU-pool stages and a linear head: trains to ~50 % on CIFAR-10 in 2 CPU epochs."""

    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*stage(3, 16), *stage(16, 32), *stage(32, 64), nn.Flatten(), nn.Linear(64 * 4 * 4, num_classes))


def meta(classes: list[str], mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.25, 0.25, 0.25)) -> DeployMetadata:
    return DeployMetadata(class_names=classes, mean=mean, std=std, run_id="int8-test", config_hash="0" * 64)


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10).eval()
    d = tmp_path_factory.mktemp("int8")
    raw = export_onnx(model, d / "resnet20.onnx", meta([str(i) for i in range(10)])).path
    return simplify_onnx(raw, d / "resnet20.sim.onnx").path


def calib(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def test_int8_qdq_runs_on_ort_and_carries_metadata(fp32_model: Path, tmp_path: Path) -> None:
    res = quantize_int8(fp32_model, tmp_path / "m.int8.onnx", calib(64), batch_size=16)
    assert res.num_calibration == 64 and res.per_channel and res.symmetric_activations
    model = onnx.load(str(res.path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # TensorRT rules: INT8 zero points are 0 (symmetric) and biases are not INT32-quantized.
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = onnx.numpy_helper.to_array(inits[node.input[2]])
            assert zp.dtype == np.int8 and not zp.any(), node.name
    assert not any(i.data_type == onnx.TensorProto.INT32 for i in model.graph.initializer)
    runner = OrtRunner(res.path, threads=1)
    assert runner.info.precision == "int8-qdq"
    assert runner.run(calib(7, seed=1)).shape == (7, 10)  # dynamic batch survives quantization
    md_fp, md_q = read_metadata(fp32_model), read_metadata(res.path)
    assert md_q["class_names"] == md_fp["class_names"] and md_q["mean"] == md_fp["mean"]
    assert md_q["precision"] == "int8-qdq" and md_q["stage"] == "quantized"
    assert json.loads(md_q["quantization"])["num_calibration"] == 64


def _ort_optimized_ops(path: Path, tmp_path: Path) -> dict[str, int]:
    """Op counts of the graph onnxruntime's CPU provider really executes (all optimizations, QDQ fusion included)."""
    import collections

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    so.optimized_model_filepath = str(tmp_path / f"{path.stem}.ort.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return dict(collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node))


def test_cpu_flavour_runs_every_conv_as_int8_on_onnxruntime(fp32_model: Path, tmp_path: Path) -> None:
    """U8S8 (uint8 asymmetric activations) fuses every Conv into QLinearConv on onnxruntime's CPU provider; the
    TensorRT flavour (int8 symmetric, TensorRT's placement: no Q on Conv outputs) leaves every convolution in float
    after its DequantizeLinear inputs — the reason the pipeline writes both."""
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(fp32_model)).graph.node)
    cpu = quantize_int8(fp32_model, tmp_path / "m.int8.cpu.onnx", calib(32), activations="uint8")
    trt = quantize_int8(fp32_model, tmp_path / "m.int8.onnx", calib(32))
    assert cpu.activations == "uint8" and not cpu.symmetric_activations and json.loads(
        read_metadata(cpu.path)["quantization"])["activation_type"] == "uint8"
    model = onnx.load(str(cpu.path))
    inits = {i.name: i for i in model.graph.initializer}
    zps = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
           if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    assert zps and all(z.dtype == np.uint8 for z in zps)
    ops_cpu, ops_trt = _ort_optimized_ops(cpu.path, tmp_path), _ort_optimized_ops(trt.path, tmp_path)
    assert ops_cpu.get("QLinearConv", 0) == convs and ops_cpu.get("Conv", 0) == 0, ops_cpu
    assert ops_trt.get("QLinearConv", 0) == 0 and ops_trt.get("Conv", 0) + ops_trt.get("FusedConv", 0) == convs, ops_trt
    x = calib(8, seed=2)
    ref = OrtRunner(fp32_model, threads=1).run(x)
    assert np.abs(OrtRunner(cpu.path, threads=1).run(x) - ref).max() < 0.5 * np.abs(ref).max()  # quantized, not broken
    with pytest.raises(UserError, match="unknown INT8 activation type"):
        quantize_int8(fp32_model, tmp_path / "x.onnx", calib(4), activations="int4")


def test_tensorrt_flavour_placement_on_resnet20(fp32_model: Path, tmp_path: Path) -> None:
    """resnet20 (option-B shortcuts): Q/DQ on the 21 Conv inputs and weights, the skip input of the 9 residual Adds
    and the pool input; none on Conv/Relu/Add outputs, Flatten, the Gemm or the logits (ModelOpt's placement; it
    also quantizes Flatten's input — export.qdq_placement); only the default opset domain imported."""
    res = quantize_int8(fp32_model, tmp_path / "m.int8.onnx", calib(16))
    assert res.qdq_placement == {"Add[1]:act": 9, "Conv[0]:act": 21, "Conv[1]:weight": 21, "GlobalAveragePool[0]:act": 1}
    assert res.op_counts["QuantizeLinear"] == 22 and res.op_counts["DequantizeLinear"] == 43, res.op_counts
    assert [o.domain for o in onnx.load(str(res.path)).opset_import] == [""]
    assert json.loads(read_metadata(res.path)["quantization"])["placement"] == "tensorrt"


def test_calibration_uses_at_most_n_images(fp32_model: Path, tmp_path: Path) -> None:
    res = quantize_int8(fp32_model, tmp_path / "m.int8.onnx", calib(40), num_calibration=24, preprocess=False)
    assert res.num_calibration == 24 and not res.preprocessed


def test_calibration_reader_batches() -> None:
    reader = NumpyCalibrationReader(calib(10), "input", batch_size=4)
    sizes = []
    while (item := reader.get_next()) is not None:
        sizes.append(item["input"].shape[0])
    assert sizes == [4, 4, 2] and len(reader) == 3
    reader.rewind()
    assert reader.get_next() is not None


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (np.zeros((8, 32, 32, 3), dtype=np.uint8), "dtype uint8"),
        (np.zeros((8, 32, 32, 3), dtype=np.float32), "shape (N, 3, 32, 32)"),
        (np.zeros((0, 3, 32, 32), dtype=np.float32), "empty"),
        ([[1.0]], "numpy array"),
    ],
)
def test_bad_calibration_data(fp32_model: Path, tmp_path: Path, data: object, needle: str) -> None:
    dest = tmp_path / "m.int8.onnx"
    dest.write_bytes(b"previous")
    with pytest.raises(UserError) as exc:
        quantize_int8(fp32_model, dest, data)  # type: ignore[arg-type]
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert dest.read_bytes() == b"previous"


def test_quantizing_a_qdq_model_is_refused(fp32_model: Path, tmp_path: Path) -> None:
    q = quantize_int8(fp32_model, tmp_path / "q.onnx", calib(16)).path
    with pytest.raises(UserError, match="already contains QuantizeLinear"):
        quantize_int8(q, tmp_path / "qq.onnx", calib(16))
    with pytest.raises(UserError, match="unknown calibration method"):
        quantize_int8(fp32_model, tmp_path / "x.onnx", calib(16), calibrate_method="magic")


# ---------------------------------------------------------------------------------------------
# Trained model on real CIFAR-10 images


def _load_cifar():  # type: ignore[no-untyped-def]
    data_mod = pytest.importorskip("ccpcsa.data", reason="ccpcsa.data is not available yet")
    if not hasattr(data_mod, "load_data") or not hasattr(data_mod, "normalize_batch"):
        pytest.skip("ccpcsa.data has no load_data/normalize_batch yet")
    if not DATA.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {DATA}")
    return data_mod, data_mod.load_data("imagefolder:" + str(DATA), progress=False)


@pytest.mark.slow
def test_int8_agrees_with_fp32_on_trained_model(tmp_path: Path) -> None:
    data_mod, data = _load_cifar()
    rng = np.random.default_rng(0)
    tr = rng.permutation(len(data.train.labels))[:10_000]
    te = rng.permutation(len(data.test.labels))[:1_000]
    cal = rng.permutation(len(data.train.labels))[:512]

    def norm(images: np.ndarray) -> torch.Tensor:
        return data_mod.normalize_batch(images, data.mean, data.std)

    x_train, y_train = norm(data.train.images[tr]), torch.from_numpy(data.train.labels[tr])
    x_test, y_test = norm(data.test.images[te]).numpy(), data.test.labels[te]

    torch.manual_seed(0)
    model = small_cnn(len(data.classes))
    epochs, bs, lr = 2, 128, 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * -(-len(tr) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(tr))
        for i in range(0, len(tr), bs):
            idx = perm[i : i + bs]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    train_s = time.perf_counter() - t0
    model.eval()

    md = DeployMetadata(class_names=data.classes, mean=data.mean, std=data.std, run_id="int8-trained", config_hash="1" * 64)
    raw = export_onnx(model, tmp_path / "cnn.onnx", md).path
    sim = simplify_onnx(raw, tmp_path / "cnn.sim.onnx").path
    calib_x = norm(data.train.images[cal]).numpy()
    q = quantize_int8(sim, tmp_path / "cnn.int8.onnx", calib_x).path
    reduce, why = resolve_reduce_range("auto")
    q_cpu = quantize_int8(sim, tmp_path / "cnn.int8.cpu.onnx", calib_x, activations="uint8", reduce_range=reduce).path
    assert tensorrt_flavour(q) and not tensorrt_flavour(q_cpu) and not tensorrt_flavour(sim)

    fp32 = OrtRunner(sim, threads=2)
    # the TensorRT flavour as TensorRT computes it (Q/DQ in float); the CPU flavour through onnxruntime's fused integer
    # kernels, with 7-bit weights on a CPU whose kernels saturate (this machine: reduce_range=auto says which)
    cmp = compare_runners(fp32, OrtRunner(q, threads=2, graph_optimization=False), x_test, y_test)
    cmp_cpu = compare_runners(fp32, OrtRunner(q_cpu, threads=2), x_test, y_test)
    print(f"\ntrain {train_s:.1f}s; reduce_range={reduce} ({why}); {json.dumps(cmp.to_dict())}; {json.dumps(cmp_cpu.to_dict())}")
    assert cmp.n == 1000
    assert cmp.accuracy_a_pct is not None and cmp.accuracy_a_pct >= 40.0, cmp
    assert cmp.top1_agreement_pct >= 97.0, cmp
    assert cmp_cpu.top1_agreement_pct >= 97.0, cmp_cpu


def test_int8_saturation_rule_by_cpu_flags() -> None:
    """7-bit weights exactly where onnxruntime's INT8 kernels add u8·s8 pairs into int16: x86 without VNNI/AMX."""
    assert int8_saturates(frozenset({"avx2", "fma"}), "x86_64")[0]
    assert int8_saturates(frozenset({"avx512f", "avx512bw"}), "x86_64")[0]
    assert not int8_saturates(frozenset({"avx512f", "avx512_vnni"}), "x86_64")[0]
    assert not int8_saturates(frozenset({"avx2", "avx_vnni"}), "x86_64")[0]
    assert not int8_saturates(frozenset(), "aarch64")[0]
    assert resolve_reduce_range(True) == (True, "set by export.int8_reduce_range")
    assert resolve_reduce_range("auto")[0] == int8_saturates()[0]
    with pytest.raises(UserError, match="int8_reduce_range"):
        resolve_reduce_range("sometimes")


def test_reduce_range_halves_the_weight_range(fp32_model: Path, tmp_path: Path) -> None:
    """reduce_range stores conv weights in [-64, 64] (7 bits) with twice the scale; without it they use [-127, 127]."""
    def weights(path: Path) -> tuple[int, int]:
        m = onnx.load(str(path))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
        ws = [inits[n.input[0]] for n in m.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
              and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim == 4]
        return min(int(w.min()) for w in ws), max(int(w.max()) for w in ws)

    full = quantize_int8(fp32_model, tmp_path / "full.onnx", calib(16), activations="uint8")
    seven = quantize_int8(fp32_model, tmp_path / "seven.onnx", calib(16), activations="uint8", reduce_range=True)
    assert seven.reduce_range and not full.reduce_range
    assert json.loads(read_metadata(seven.path)["quantization"])["reduce_range"] is True
    lo, hi = weights(seven.path)
    assert -64 <= lo and hi <= 64 and (lo == -64 or hi == 64)
    lo, hi = weights(full.path)
    assert min(lo, -hi) <= -120
