"""Target profiles: the probe pack the build machine writes, and the ``target.json`` the device timed from it.

``write_probe_pack`` writes, for the unpruned (deployed) model, everything :mod:`export.edge.target_probe` times on the
device: the model as FP32 and INT8 (U8S8) ONNX, the single-convolution graphs of the latency table (every conv layer
shape of the model at the grid of widths :class:`export.layer_latency.LayerTable` uses with a step of ``grid_step``,
per precision), a width staircase of the widest prunable convolution, an empty graph, the probe scripts, and
``pack.json`` indexing them with the model's fingerprint. :func:`load_profile` reads the device's answer back, refusing
a profile of another model or input size, and :class:`ProfileLatencyProbe` serves it to the pruning loop in place of a
measurement on this machine: latencies are the profile's table calibrated to the device's end-to-end time of
the unpruned model (HALP, Shen et al., NeurIPS 2022, §3.2), so the loop stops on that calibrated estimate.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ccpcsa.errors import UserError
from ccpcsa.io.artifacts import atomic_write_bytes, atomic_write_json
from ccpcsa.surgery.cost import LatencyCost, LayerShape, layer_shapes
from ccpcsa.surgery.prune import ChannelPruner

from .edge.sessions import EdgeError, read_json
from .edge.target_probe import PACK_FILE, PACK_FORMAT, PROFILE_FORMAT
from .layer_latency import LayerTable, conv_model, deployed_copy, empty_model, export_deployed, qdq_conv_model

EDGE = Path(__file__).resolve().parent / "edge"
PROBE_FILES = ("target_probe.py", "sessions.py", "timing.py")
STAIRCASE_POINTS = 16
PACK_MODELS = {"fp32": "model.fp32.onnx", "int8": "model.int8.onnx"}  #: the whole-model files of a probe pack


def _shapes(deployed: nn.Module, input_size: int) -> list[LayerShape]:
    """The conv/linear layer shapes of a deployed graph (:func:`deployed_copy`), as the pruner sees them."""
    return layer_shapes(ChannelPruner(deployed, input_size, round_to=1, min_channels=1))


def _fingerprint(shapes: list[LayerShape], input_size: int) -> str:
    rows = [[list(map(str, s.signature)), s.c_in, s.c_out] for s in shapes]
    return hashlib.sha256(json.dumps([input_size, rows]).encode()).hexdigest()


def fingerprint(model: nn.Module, input_size: int) -> str:
    """SHA-256 of the model's conv/linear layer shapes (signature and widths) and input size: a profile timed for
    one model fits another only when they are equal."""
    return _fingerprint(_shapes(deployed_copy(model), input_size), input_size)


def _staircase_layer(shapes: list[LayerShape]) -> LayerShape | None:
    convs = [s for s in shapes if s.kind == "conv" and not s.depthwise and s.groups == 1 and s.out_key is not None]
    return max(convs, key=lambda s: (s.c_out, s.c_in), default=None)


def write_probe_pack(model: nn.Module, input_size: int, out_dir: str | Path, *, name: str, batches: list[int],
                     layer_batch: int, precisions: tuple[str, ...] = ("fp32", "int8"), grid_step: int = 4) -> Path:
    """Write the probe pack of ``model`` into ``out_dir`` (module doc) and return its ``pack.json``. INT8 graphs are
    quantized on random calibration data: their *speed*, not their accuracy, is what the probe measures."""
    from .quantize import quantize_int8

    out = Path(out_dir)
    (out / "layers").mkdir(parents=True, exist_ok=True)
    m = export_deployed(model, out / PACK_MODELS["fp32"], input_size)
    shapes = _shapes(m, input_size)
    models = {"fp32": PACK_MODELS["fp32"]}
    if "int8" in precisions:
        calib = np.random.default_rng(0).standard_normal((32, 3, input_size, input_size), dtype=np.float32)
        quantize_int8(out / PACK_MODELS["fp32"], out / PACK_MODELS["int8"], calib, num_calibration=32, activations="uint8")
        models["int8"] = PACK_MODELS["int8"]
    table = LayerTable(layer_batch, 1, grid_step, points={})
    builders = {"fp32": conv_model, "int8": qdq_conv_model}
    layers, stair = [], []
    for prec in models:
        for key, (lay, ci, co) in table.grid_points(shapes).items():
            f = f"layers/{prec}-{key.replace(':', '-')}.onnx"
            atomic_write_bytes(out / f, builders[prec](lay, ci, co, layer_batch))
            layers.append({"key": key, "precision": prec, "file": f, "input_shape": [layer_batch, ci, *lay.in_hw]})
        big = _staircase_layer(shapes)
        if big is not None:
            step = max(grid_step, big.c_out // STAIRCASE_POINTS)
            for co in range(step, big.c_out + 1, step):
                f = f"layers/{prec}-staircase-{co}.onnx"
                atomic_write_bytes(out / f, builders[prec](big, big.c_in, co, layer_batch))
                stair.append({"c_out": co, "precision": prec, "file": f, "input_shape": [layer_batch, big.c_in, *big.in_hw]})
    atomic_write_bytes(out / "empty.onnx", empty_model())
    for f in PROBE_FILES:
        shutil.copyfile(EDGE / f, out / f)
    pack = {"format": PACK_FORMAT, "model": {"name": name, "input_chw": [3, input_size, input_size],
                                             "fingerprint": _fingerprint(shapes, input_size)},
            "input_chw": [3, input_size, input_size], "batches": batches, "layer_batch": layer_batch, "grid_step": grid_step,
            "models": models, "empty": "empty.onnx", "layers": layers, "staircase": stair}
    return atomic_write_json(out / PACK_FILE, pack)


@dataclass(frozen=True)
class TargetProfile:
    """A device's ``target.json``: ``identity`` (runtime, version, device), ``threads``, the pack's ``layer_batch`` and
    ``grid_step``, and per precision ``model_ms`` (batch → ms), ``layers`` (table key → own ms) and ``block``."""

    path: Path
    identity: dict[str, Any]
    threads: int
    fingerprint: str
    input_size: int
    layer_batch: int
    grid_step: int
    precisions: dict[str, dict[str, Any]]

    @property
    def label(self) -> str:
        """``openvino-cpu 2026.4.1 on <device>, 2 threads (target.json)``."""
        i = self.identity
        return f"{i.get('runtime')} {str(i.get('version', '')).split('-')[0]} on {i.get('device')}, {self.threads} threads"

    def check_model(self, model: nn.Module, input_size: int | None = None) -> None:
        """One-line UserError unless this profile was timed for ``model`` at ``input_size`` (default: the pack's)."""
        size = input_size or self.input_size
        if size != self.input_size or fingerprint(model, size) != self.fingerprint:
            raise UserError(f"target.profile {self.path} was timed for another model or input size (its pack: "
                            f"{self.input_size}×{self.input_size} input); build a probe pack of this model "
                            "(python -m pipeline probe-pack) and re-run target_probe.py on the device")

    def block(self, precision: str) -> int:
        """The channel block the device's staircase showed for ``precision``."""
        return int(self.need(precision)["block"])

    def need(self, precision: str) -> dict[str, Any]:
        """The record of ``precision``, or a one-line UserError naming what the profile has."""
        if precision not in self.precisions:
            raise UserError(f"target.profile {self.path} has no {precision} timings (it has {', '.join(sorted(self.precisions))});"
                            f" set target.precision to one of those or re-run target_probe.py --precision {precision}")
        return self.precisions[precision]


def load_profile(path: str | Path) -> TargetProfile:
    """Read and check ``target.json`` (one-line :class:`UserError` for a missing, malformed or foreign file)."""
    p = Path(path).expanduser()
    try:
        data = read_json(p, "give the target.json target_probe.py wrote (re-run it on the device)")
    except EdgeError as exc:
        raise UserError(f"target.profile: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise UserError(f"target.profile {p} is not a target profile (format {data.get('format') if isinstance(data, dict) else None!r},"
                        f" expected {PROFILE_FORMAT!r}); give the target.json target_probe.py wrote")
    try:
        pack = data["pack"]
        return TargetProfile(p, dict(data["identity"]), int(data["threads"]), str(pack["model"]["fingerprint"]),
                             int(pack["model"]["input_chw"][-1]), int(pack["layer_batch"]), int(pack["grid_step"]), dict(data["precisions"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"target.profile {p} lacks {exc}; re-run target_probe.py on the device") from exc


class ProfileLatencyProbe:
    """The pruning loop's latency source (:class:`ccpcsa.pruning.loop.LatencyProbe`) for a device that is not this
    machine: the profile's layer table for ``precision``, calibrated so that the unpruned model's estimate equals the
    device's milliseconds at ``batch``; every later "measurement" is that calibrated estimate."""

    def __init__(self, profile: TargetProfile, precision: str, batch: int, input_size: int) -> None:
        rec = profile.need(precision)
        if batch != profile.layer_batch:
            raise UserError(f"target.profile {profile.path} timed layers at batch {profile.layer_batch}, not "
                            f"prune.target.latency_batch {batch}; set prune.target.latency_batch={profile.layer_batch} or rebuild the pack")
        if str(batch) not in rec["model_ms"]:
            raise UserError(f"target.profile {profile.path} has no model timing at batch {batch}")
        self.profile, self.precision, self.batch, self.input_size = profile, precision, batch, input_size
        self.table = LayerTable(batch, profile.threads, profile.grid_step, points=rec["layers"])
        self.reference_ms = float(rec["model_ms"][str(batch)])
        self._constant: float | None = None
        self._scale = 1.0

    def set_reference(self, model: nn.Module) -> float:
        """Check that the profile was timed for ``model`` (its fingerprint); the device's unpruned milliseconds.
        Calibration as :meth:`ccpcsa.surgery.cost.LatencyCost.proportional`: ``estimate = constant + scale · table``
        with ``constant = device − table`` when that is ≥ 0, else ``constant = 0`` and ``scale = device / table``
        (isolated layers each pay their own reorders, so at batch 1 their sum can exceed the whole model's time)."""
        self.profile.check_model(model, self.input_size)
        table = self._table_ms(model)
        self._constant, self._scale = (self.reference_ms - table, 1.0) if table <= self.reference_ms else \
            (0.0, self.reference_ms / table)
        return self.reference_ms

    def _table_ms(self, model: nn.Module) -> float:
        return LatencyCost(ChannelPruner(deployed_copy(model), self.input_size, round_to=1, min_channels=1), self.table)()

    def measure_pair(self, model: nn.Module | None) -> tuple[float, float]:
        """``(unpruned ms, model ms)`` on the device: timed there for the unpruned model, the calibrated table's estimate
        for ``model``."""
        assert self._constant is not None, "call set_reference first"
        if model is None:
            return self.reference_ms, self.reference_ms
        return self.reference_ms, max(self._constant + self._scale * self._table_ms(model), 1e-6)

    def cost_model(self, pruner: ChannelPruner, actual_ms: float) -> LatencyCost:
        """The pruner's :class:`LatencyCost` from the device's table, calibrated to ``actual_ms``."""
        cost = LatencyCost(pruner, self.table)
        cost.calibrate(actual_ms)
        return cost.proportional()
