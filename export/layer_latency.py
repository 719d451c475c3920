"""Latency of layers and models on the target runtime, for latency-targeted pruning (``prune.target.speedup``).

HALP (Shen et al., "Structural Pruning via Latency-Saliency Knapsack", NeurIPS 2022, §3.2) prunes against a
latency *table*: the timed latency of each layer as a function of its input and output widths. Here:

- :class:`LayerTable` measures one convolution (+ ReLU, which onnxruntime fuses) of a layer's exact shape
  (kernel, stride, dilation, padding, groups, input resolution, batch) on the target runtime (onnxruntime's CPU
  provider or OpenVINO CPU) with the deployment's thread count, on a grid of widths (the alignment's multiples, at most ~9 per axis, plus the
  full width), interleaving the grid's points over several rounds and keeping each point's median; other
  widths are interpolated bilinearly. Points are cached in a JSON file keyed by runtime, machine, threads and
  batch, so a run directory measures each point once.
- :class:`RuntimeLatencyProbe` measures a whole PyTorch model end to end the way ``validate`` does (ONNX export,
  the same runtime, median of interleaved rounds) and builds the :class:`ccpcsa.surgery.cost.LatencyCost` for a pruner:
  the table's layer latencies plus a constant calibrated so that the current model's estimate equals its
  timed latency (the runtime's per-run overhead, reorders, pooling, the classifier).

The pruning loop stops on the latency the probe times, never on the table's estimate.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ccpcsa.io.artifacts import atomic_write_json
from ccpcsa.surgery.cost import LatencyCost, LayerShape
from ccpcsa.surgery.prune import ChannelPruner

from .edge.sessions import open_session, runtime_identity
from .edge.timing import own_times
from .latency import calls_for_seconds, interleaved_rounds, paired_ratio
from .runtime import ort_session_options

MAX_GRID = 9


def machine_id(threads: int, runtime: str = "onnxruntime-cpu") -> dict[str, Any]:
    """What a latency measurement depends on besides the model: CPU model, core count, the runtime and its version,
    threads, and the timing protocol (interleaved rounds, thread spinning off: tables from an older protocol are
    re-timed). onnxruntime's record keeps its historical keys, so cached tables stay valid."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = {"runtime": runtime, "onnxruntime": ort.__version__} if runtime == "onnxruntime-cpu" else \
        {"runtime": runtime, "version": runtime_identity(runtime)["version"]}
    return {**version, "cpu": cpu, "cores": os.cpu_count(), "threads": threads, "protocol": "interleaved-rounds/no-spinning"}


def ort_session(model: bytes | str | Path, threads: int) -> ort.InferenceSession:
    """A CPU session configured like the deployment's (:func:`export.runtime.ort_session_options`) but with thread
    spinning off: every measurement here interleaves sessions on the same cores (see :func:`export.latency.paired_speedup`)."""
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=ort_session_options(threads, spinning=False), providers=["CPUExecutionProvider"])


def _session_call(session: ort.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def model_call(runtime: str, model: bytes, x: np.ndarray, threads: int, work_dir: str | Path | None = None) -> Callable[[], object]:
    """A no-argument call that runs the ONNX ``model`` (bytes) on ``x`` with a session of ``runtime`` configured for
    interleaved timing (onnxruntime: :func:`ort_session`; OpenVINO: :func:`export.edge.sessions.open_session`, from a
    temporary file in ``work_dir`` that is deleted once compiled)."""
    if runtime == "onnxruntime-cpu":
        return _session_call(ort_session(model, threads), x)
    fd, tmp = tempfile.mkstemp(prefix=".latency-", suffix=".onnx", dir=work_dir)
    os.close(fd)
    try:
        Path(tmp).write_bytes(model)
        sess = open_session(runtime, tmp, threads=threads)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return lambda: sess.run(x)


def time_calls(calls: Sequence[Callable[[], object]], *, rounds: int = 5, min_seconds: float = 0.02,
               warmup: int = 3) -> list[list[float]]:
    """Per call, the mean milliseconds per run in each of ``rounds`` interleaved rounds
    (:func:`export.latency.interleaved_rounds`; every call runs for about ``min_seconds`` per round)."""
    per_round = [calls_for_seconds(c, min_seconds, warmup) for c in calls]
    samples = interleaved_rounds(calls, rounds=rounds, per_round=per_round, warmup=0)
    return [[float(np.mean(r)) for r in per] for per in samples]


def conv_model(layer: LayerShape, c_in: int, c_out: int, batch: int) -> bytes:
    """A one-node ONNX model of ``layer`` at these widths: Conv (bias as the layer has it) → Relu, random weights."""
    groups = c_in if layer.depthwise else layer.groups
    if layer.depthwise:
        c_out = c_in
    rng = np.random.default_rng(0)
    w = rng.standard_normal((c_out, c_in // groups, *layer.kernel)).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["x", "w"]
    if layer.bias:
        inits.append(numpy_helper.from_array(np.zeros(c_out, np.float32), "b"))
        ins.append("b")
    conv = helper.make_node("Conv", ins, ["y"], kernel_shape=list(layer.kernel), strides=list(layer.stride),
                            dilations=list(layer.dilation), pads=[*layer.padding, *layer.padding], group=groups)
    relu = helper.make_node("Relu", ["y"], ["z"])
    h, w_ = layer.in_hw
    graph = helper.make_graph([conv, relu], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c_in, h, w_])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def qdq_conv_model(layer: LayerShape, c_in: int, c_out: int, batch: int) -> bytes:
    """The INT8 counterpart of :func:`conv_model`, as the onnxruntime-CPU flavour quantizes a convolution: uint8
    activations through QuantizeLinear/DequantizeLinear, int8 per-channel weights through DequantizeLinear, the
    output quantized again — the DQ → Conv → Q pattern onnxruntime fuses into ``QLinearConv`` and OpenVINO into an
    INT8 convolution (the Relu is folded into the output's quantization range, as in the quantized model)."""
    groups = c_in if layer.depthwise else layer.groups
    if layer.depthwise:
        c_out = c_in
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(c_out, c_in // groups, *layer.kernel), dtype=np.int8)
    inits = [numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.full(c_out, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(c_out, np.int8), "wz"), numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], kernel_shape=list(layer.kernel), strides=list(layer.stride),
                              dilations=list(layer.dilation), pads=[*layer.padding, *layer.padding], group=groups),
             helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]), helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["z_out"])]
    h, w_ = layer.in_hw
    graph = helper.make_graph(nodes, "layer_int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c_in, h, w_])],
                              [helper.make_tensor_value_info("z_out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def empty_model() -> bytes:
    """A one-Identity ONNX model on a (1, 1) input: the runtime's per-call overhead, subtracted from each layer."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def width_grid(full: int, alignment: int) -> list[int]:
    """Widths at which a layer axis of ``full`` channels is timed: multiples of the alignment (thinned to at most
    :data:`MAX_GRID`) plus ``full``."""
    step = alignment
    while full // step > MAX_GRID:
        step += alignment
    grid = sorted({*range(step, full + 1, step), full})
    return grid or [full]


def _interp(xs: Sequence[int], x: float) -> tuple[int, int, float]:
    """Bracketing indices of ``x`` in sorted ``xs`` and the weight of the upper one (clamped at the ends)."""
    if x <= xs[0]:
        return 0, 0, 0.0
    if x >= xs[-1]:
        return len(xs) - 1, len(xs) - 1, 0.0
    j = int(np.searchsorted(xs, x))
    lo, hi = xs[j - 1], xs[j]
    return j - 1, j, (x - lo) / (hi - lo)


class LayerTable:
    """Per-layer latency table on ``runtime`` (``onnxruntime-cpu`` or ``openvino-cpu``; see the module docstring).
    ``cache`` is a JSON file (optional). ``points`` given: a table timed elsewhere (a target profile) — looked up,
    never timed here."""

    def __init__(self, batch: int, threads: int, alignment: int, cache: str | Path | None = None, rounds: int = 5,
                 progress: Callable[[str], None] | None = None, runtime: str = "onnxruntime-cpu",
                 points: dict[str, float] | None = None) -> None:
        self.batch, self.threads, self.alignment, self.rounds, self.runtime = batch, threads, alignment, rounds, runtime
        self.frozen = points is not None
        self.machine = {} if self.frozen else machine_id(threads, runtime)
        self.cache = Path(cache) if cache else None
        self.points: dict[str, float] = dict(points or {})
        self.timed = 0  # points timed here (not read from the cache)
        self.progress = progress
        if self.cache and self.cache.is_file():
            try:
                data = json.loads(self.cache.read_text())
                if data.get("machine") == self.machine:
                    self.points = {k: float(v) for k, v in data.get("points", {}).items()}
            except (OSError, ValueError):
                self.points = {}

    def _sig(self, layer: LayerShape) -> str:
        sig = json.dumps([list(layer.signature), self.batch], default=list)
        return hashlib.sha256(sig.encode()).hexdigest()[:16]

    def _key(self, layer: LayerShape, c_in: int, c_out: int) -> str:
        return f"{self._sig(layer)}:{c_in}:{c_out}"

    def _grid(self, layer: LayerShape) -> tuple[list[int], list[int]]:
        if self.frozen:  # a profile's points: the grid the device timed (the unpruned widths'), whatever the widths now
            ins: set[int] = set()
            outs: set[int] = set()
            sig = self._sig(layer)
            for k in self.points:
                h, ci, co = k.split(":")
                if h == sig:
                    ins.add(int(ci))
                    outs.add(int(co))
            if ins:
                return sorted(ins), sorted(outs)
        outs = width_grid(layer.c_out, self.alignment)
        ins = outs if layer.depthwise else width_grid(layer.c_in, self.alignment)
        if layer.groups > 1 and not layer.depthwise:
            ins = [c for c in ins if c % layer.groups == 0] or [layer.c_in]
            outs = [c for c in outs if c % layer.groups == 0] or [layer.c_out]
        if layer.in_parts == ():  # fed by the image or an unprunable producer: one input width
            ins = [layer.c_in]
        if layer.out_key is None:
            outs = [layer.c_out]
        return ins, outs

    def grid_points(self, layers: Iterable[LayerShape]) -> dict[str, tuple[LayerShape, int, int]]:
        """``{key: (layer, c_in, c_out)}`` of every grid point of the conv ``layers`` (what :meth:`prepare` measures and a
        probe pack ships)."""
        todo: dict[str, tuple[LayerShape, int, int]] = {}
        for layer in layers:
            if layer.kind != "conv":
                continue
            ins, outs = self._grid(layer)
            for ci in ins:
                for co in ([ci] if layer.depthwise else outs):
                    todo[self._key(layer, ci, co)] = (layer, ci, co)
        return todo

    def prepare(self, layers: Iterable[LayerShape]) -> None:
        """Measure every grid point of ``layers`` not in the cache (interleaved per layer shape) and save the cache;
        a table from a profile measures nothing (its points are the device's)."""
        todo = {k: v for k, v in self.grid_points(layers).items() if k not in self.points}
        if not todo or self.frozen:
            return
        if self.progress:
            self.progress(f"latency table: measuring {len(todo)} layer shapes on {self.runtime} "
                          f"(batch {self.batch}, {self.threads} threads)")
        items = list(todo.items())
        empty = model_call(self.runtime, empty_model(), np.zeros((1, 1), np.float32), self.threads)
        calls = [model_call(self.runtime, conv_model(lay, ci, co, self.batch),
                            np.random.default_rng(1).standard_normal((self.batch, ci, *lay.in_hw), dtype=np.float32),
                            self.threads) for _, (lay, ci, co) in items]
        # the layer's own time: the per-call overhead is the model's constant
        self.points.update(zip((k for k, _ in items), own_times(calls, empty, rounds=self.rounds), strict=True))
        self.timed += len(todo)
        if self.cache:
            atomic_write_json(self.cache, {"machine": self.machine, "batch": self.batch, "points": self.points})

    def __call__(self, layer: LayerShape, c_in: int, c_out: int) -> float:
        """Milliseconds of ``layer`` at ``(c_in, c_out)``: the timed point, else bilinear interpolation on its grid
        (linears and untimed layers cost 0: they are part of the calibrated constant)."""
        if layer.kind != "conv":
            return 0.0
        ins, outs = self._grid(layer)
        if layer.depthwise:
            i0, i1, t = _interp(ins, c_in)
            a = self.points.get(self._key(layer, ins[i0], ins[i0]))
            b = self.points.get(self._key(layer, ins[i1], ins[i1]))
            return 0.0 if a is None or b is None else (1 - t) * a + t * b
        i0, i1, ti = _interp(ins, c_in)
        o0, o1, to = _interp(outs, c_out)
        vals = []
        for ii in (i0, i1):
            row = []
            for oo in (o0, o1):
                v = self.points.get(self._key(layer, ins[ii], outs[oo]))
                if v is None:
                    return 0.0
                row.append(v)
            vals.append((1 - to) * row[0] + to * row[1])
        return (1 - ti) * vals[0] + ti * vals[1]


OrtLayerTable = LayerTable  # the name of older callers


class RuntimeLatencyProbe:
    """End-to-end latency of a PyTorch model on ``runtime`` (``onnxruntime-cpu`` or ``openvino-cpu``) at ``batch`` (the
    deployed graph: BAM detached), plus the calibrated :class:`LatencyCost` of a pruner. Temporary ONNX files live in
    ``work_dir``; the layer table is cached there as ``latency_table.b<batch>.t<threads>.json`` (onnxruntime) or
    ``latency_table.<runtime>.b<batch>.t<threads>.json``."""

    def __init__(self, batch: int, threads: int, alignment: int, work_dir: str | Path, input_size: int,
                 rounds: int = 11, progress: Callable[[str], None] | None = None, runtime: str = "onnxruntime-cpu") -> None:
        self.batch, self.threads, self.input_size, self.rounds, self.runtime = batch, threads, input_size, rounds, runtime
        self.work_dir = Path(work_dir)
        tag = "" if runtime == "onnxruntime-cpu" else f"{runtime}."
        self.table = LayerTable(batch, threads, alignment, self.work_dir / f"latency_table.{tag}b{batch}.t{threads}.json",
                                progress=progress, runtime=runtime)
        self._reference: Callable[[], object] | None = None

    def _session(self, model: nn.Module) -> Callable[[], object]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".latency-probe-", suffix=".onnx.tmp", dir=self.work_dir)
        os.close(fd)
        try:
            export_deployed(model, tmp, self.input_size)
            x = np.random.default_rng(0).standard_normal((self.batch, 3, self.input_size, self.input_size), dtype=np.float32)
            return model_call(self.runtime, onnx.load(tmp).SerializeToString(), x, self.threads, self.work_dir)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def set_reference(self, model: nn.Module) -> float:
        """Keep ``model`` (the unpruned one) as the reference every later measurement is interleaved with; its ms."""
        self._reference = self._session(model)
        return self.measure_pair(None)[0]

    def measure_pair(self, model: nn.Module | None) -> tuple[float, float]:
        """``(reference ms, model ms)`` from interleaved rounds (``model`` None: the reference twice): the reference's
        median over rounds, and the model's as that divided by the median per-round speedup
        (:func:`export.latency.paired_ratio`), so ``ref / model`` is the paired speedup."""
        assert self._reference is not None, "call set_reference first"
        s = self._reference if model is None else self._session(model)
        ref_r, got_r = time_calls([self._reference, s], rounds=self.rounds, min_seconds=0.05)
        ref = float(np.median(ref_r))
        return ref, ref / paired_ratio([[v] for v in ref_r], [[v] for v in got_r])[0]

    def cost_model(self, pruner: ChannelPruner, actual_ms: float) -> LatencyCost:
        """The pruner's :class:`LatencyCost` from this table, calibrated to ``actual_ms`` for the current widths."""
        cost = LatencyCost(pruner, self.table)
        self.table.prepare(cost.layers)
        cost.calibrate(actual_ms)
        return cost


def deployed_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` as deployed (BAM detached), in eval mode."""
    from ccpcsa.models.attention import detach_bam
    from ccpcsa.placement import cpu_copy

    m = copy.deepcopy(cpu_copy(model)).eval()
    detach_bam(m)
    return m


def export_deployed(model: nn.Module, path: str | Path, input_size: int) -> nn.Module:
    """Export the deployed graph of ``model`` (:func:`deployed_copy`) to the ONNX file ``path`` for timing only: class
    names ``0 … n−1`` and identity normalization in its metadata. Returns the deployed copy."""
    from .metadata import DeployMetadata
    from .onnx_export import export_onnx

    m = deployed_copy(model)
    meta = DeployMetadata(class_names=[str(i) for i in range(_num_outputs(m, input_size))], mean=(0.0, 0.0, 0.0),
                          std=(1.0, 1.0, 1.0), input_size=input_size)
    export_onnx(m, path, meta)
    return m


def _num_outputs(model: nn.Module, input_size: int) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, input_size, input_size)).shape[1])
