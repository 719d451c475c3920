"""TensorRT Q/DQ placement of the INT8 QDQ model (export.qdq_placement): Conv inputs and weights, the skip input of
each residual Add and pooling inputs quantized; no Q/DQ on layer outputs, Flatten, the Gemm or the logits; only used
opset domains; the onnxruntime-CPU flavour unchanged."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export.metadata import DeployMetadata
from export.onnx_export import export_onnx
from export.qdq_placement import drop_unused_opsets, non_residual_add_inputs, qdq_placement
from export.quantize import quantize_int8, tensorrt_flavour
from export.runtime import OrtRunner
from export.simplify import simplify_onnx


class Block(nn.Module):
    """Basic residual block; an option-B 1×1 shortcut convolution when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                               nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Sequential() if stride == 1 and cin == cout
                      else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x) + self.short(x))


class Tiny(nn.Module):
    """Stem conv + max pool, an identity block, a shortcut-conv block, global average pool, Flatten, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.b1, self.b2 = Block(16, 16, 1), Block(16, 32, 2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b2(self.b1(self.stem(x))))


def calib(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the folded graph is not degenerate
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    d = tmp_path_factory.mktemp("qdq")
    md = DeployMetadata(class_names=[str(i) for i in range(10)], mean=(0.5,) * 3, std=(0.25,) * 3, input_size=32)
    return simplify_onnx(export_onnx(model, d / "tiny.onnx", md).path, d / "tiny.sim.onnx").path


@pytest.fixture(scope="module")
def trt(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    res = quantize_int8(tiny, tmp_path_factory.mktemp("trt") / "tiny.int8.onnx", calib(32))
    assert res.placement == "tensorrt" and res.qdq_placement == qdq_placement(onnx.load(str(res.path)))
    return res.path


def test_tensorrt_flavour_places_qdq_like_modelopt(trt: Path) -> None:
    """Conv activations + weights, the skip input of each Add, the max-pool and global-average-pool inputs; the
    same as ModelOpt 0.47 except Flatten's input (see export.qdq_placement)."""
    m = onnx.load(str(trt))
    assert qdq_placement(m) == {"Add[1]:act": 2, "Conv[0]:act": 6, "Conv[1]:weight": 6, "GlobalAveragePool[0]:act": 1,
                                "MaxPool[0]:act": 1}
    producer = {o: n for n in m.graph.node for o in n.output}
    for node in m.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for x in node.input:  # float edges: no Q/DQ on the Gemm, Flatten, the Relus or the residual branch's Add input
            if node.op_type in ("Gemm", "Flatten", "Relu") or (node.op_type == "Add" and x == node.input[0]):
                assert x not in producer or producer[x].op_type != "DequantizeLinear", (node.name, x)
        # no layer output is quantized unless a Conv / Add skip / pool consumes it
        for out in node.output:
            users = [c for c in m.graph.node if out in c.input]
            if any(c.op_type == "QuantizeLinear" for c in users):
                assert node.op_type in ("Relu", "MaxPool", "Conv"), node.name
    logits = m.graph.output[0].name
    assert producer[logits].op_type == "Gemm" and not any(n.op_type == "QuantizeLinear" and logits in n.input
                                                          for n in m.graph.node)
    # the quantized Add input is the skip: block 1's max-pool output, block 2's shortcut convolution
    adds = [n for n in m.graph.node if n.op_type == "Add"]
    skips = [producer[producer[producer[a.input[1]].input[0]].input[0]] for a in adds]
    assert [s.op_type for s in skips] == ["MaxPool", "Conv"] and "short" in skips[1].name
    assert [producer[a.input[0]].op_type for a in adds] == ["Conv", "Conv"]
    zps = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:  # TensorRT: symmetric signed INT8 (zero point 0), float biases
        if n.op_type == "QuantizeLinear":
            assert zps[n.input[2]].dtype == np.int8 and not zps[n.input[2]].any()


def test_residual_input_rule_on_the_fp32_graph(tiny: Path) -> None:
    """ModelOpt's rule: the non-residual Add input (fused into its convolution, kept in float) is the Conv branch
    farther from the inputs' common ancestor — input 0 of both blocks, shortcut-conv block included."""
    m = onnx.load(str(tiny))
    assert list(non_residual_add_inputs(m).values()) == [0, 0]


def test_int8_files_import_only_used_opset_domains(tiny: Path, trt: Path, tmp_path: Path) -> None:
    cpu = quantize_int8(tiny, tmp_path / "tiny.int8.cpu.onnx", calib(16), activations="uint8").path
    for path in (trt, cpu):
        m = onnx.load(str(path))
        assert [o.domain for o in m.opset_import] == [""], path.name
        onnx.checker.check_model(m, full_check=True)
    m = onnx.load(str(trt))
    m.opset_import.extend([onnx.helper.make_opsetid("com.microsoft", 1), onnx.helper.make_opsetid("ai.onnx.ml", 5)])
    m.graph.node[0].domain = "ai.onnx.ml"  # a domain a node uses stays
    assert drop_unused_opsets(m) == ["com.microsoft"]
    assert sorted(o.domain for o in m.opset_import) == ["", "ai.onnx.ml"]


def test_tensorrt_flavour_runs_on_onnxruntime_and_openvino(tiny: Path, trt: Path) -> None:
    x = calib(8, seed=3)
    ref = OrtRunner(tiny, threads=1).run(x)
    scale = float(np.abs(ref).max())
    assert tensorrt_flavour(trt)
    for opt in (True, False):
        out = OrtRunner(trt, threads=1, graph_optimization=opt).run(x)
        assert out.shape == (8, 10) and np.abs(out - ref).max() < 0.25 * scale, opt
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(trt), "CPU", {"INFERENCE_NUM_THREADS": 1})
    out = compiled(x)[0]
    assert out.shape == (8, 10) and np.abs(out - ref).max() < 0.25 * scale


def test_cpu_flavour_node_counts_unchanged(tiny: Path, tmp_path: Path) -> None:
    """The onnxruntime-CPU flavour keeps onnxruntime's default placement (counts as before the TensorRT placement)."""
    t = time.perf_counter()
    res = quantize_int8(tiny, tmp_path / "tiny.int8.cpu.onnx", calib(16), activations="uint8")
    assert res.placement == "onnxruntime-cpu" and not tensorrt_flavour(res.path)
    assert res.op_counts == {"DequantizeLinear": 20, "QuantizeLinear": 13, "Conv": 6, "Add": 2, "MaxPool": 1,
                             "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}, res.op_counts
    assert time.perf_counter() - t < 60
