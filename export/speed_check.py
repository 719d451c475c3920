"""The depth search's timer (``prune.depth.min_speedup``, ``prune.depth.price: time``,
:mod:`ccpcsa.pruning.depth_choice`): end-to-end speedups of a probe model over the unpruned one, in FP32 and INT8,
where the model will run.

MACs do not say how fast a runtime runs a shape: a removed residual block takes its add and layout reorders with it,
while a narrowed INT8 convolution keeps a fixed cost that its FP32 twin does not (bench/README.md "resnet56: blocks
instead of channels"). So the search times whole models:

- :class:`MeasuredSpeedCheck` — a runtime of this machine (``onnxruntime-cpu``, ``openvino-cpu``): the deployed graph
  (BAM detached) exported to ONNX, simplified, and quantized to the onnxruntime-CPU INT8 flavour (U8S8 QDQ) on random
  calibration data — the files' *speed*, not their accuracy, is measured — then timed paired against the unpruned
  model's files (:func:`export.latency.runtime_speedups`) at every batch size of ``export.latency_batches``.
- :class:`ProfileSpeedCheck` — a device's ``target.json``: each precision's layer table calibrated to the device's
  end-to-end time of the unpruned model (:class:`export.target_profile.ProfileLatencyProbe`), at the profile's batch.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from .layer_latency import export_deployed
from .target_profile import ProfileLatencyProbe, TargetProfile

#: paired rounds per batch size: fewer than the validate stage's, a probe is one of several
ROUNDS = 7
#: random calibration images of the INT8 files (their speed, not their accuracy, is what is timed)
CALIBRATION = 16


class MeasuredSpeedCheck:
    """Speedups timed on ``runtime`` of this machine with ``threads`` threads at ``batches``, in FP32 and (with
    ``int8``) INT8; probe files live in a temporary folder removed with :meth:`close`."""

    def __init__(self, floor: float | None, runtime: str, batches: Sequence[int], threads: int, input_size: int, *,
                 int8: bool = True, rounds: int = ROUNDS) -> None:
        self.floor, self.runtime, self.batches, self.threads = floor, runtime, list(batches), threads
        self.input_size, self.int8, self.rounds = input_size, int8, rounds
        self.dir = Path(tempfile.mkdtemp(prefix="depth-speed-"))
        self._ref: dict[str, Path] = {}
        self._n = 0

    def _files(self, model: nn.Module, tag: str) -> dict[str, Path]:
        from .quantize import quantize_int8
        from .simplify import simplify_onnx

        raw, sim = self.dir / f"{tag}.onnx", self.dir / f"{tag}.sim.onnx"
        export_deployed(model, raw, self.input_size)
        simplify_onnx(raw, sim)
        out = {"fp32": sim}
        if self.int8:
            calib = np.random.default_rng(0).standard_normal((CALIBRATION, 3, self.input_size, self.input_size), dtype=np.float32)
            out["int8"] = self.dir / f"{tag}.int8.onnx"
            quantize_int8(sim, out["int8"], calib, num_calibration=CALIBRATION, activations="uint8")
        return out

    def set_reference(self, model: nn.Module) -> None:
        """Export the unpruned ``model``'s files, the reference of every later timing."""
        self._ref = self._files(model, "unpruned")

    def speedups(self, model: nn.Module, rounds: int | None = None) -> dict[str, tuple[float, float]]:
        """``{"fp32 b1": (speedup, SE), "int8 b32": …}``: the paired speedup of ``model``'s files over the reference's
        (:func:`export.latency.paired_speedup`: the median of per-round ratios, its standard error) over ``rounds``
        paired rounds (None: the check's ``rounds``)."""
        from .latency import runtime_speedups

        assert self._ref, "call set_reference first"
        self._n += 1
        files = self._files(model, f"probe{self._n}")
        out: dict[str, tuple[float, float]] = {}
        for prec, path in files.items():
            t = runtime_speedups(self.runtime, self._ref[prec], path, 1.0, threads=self.threads, batch_sizes=self.batches,
                                 rounds=rounds or self.rounds, warmup=2)
            out.update({f"{prec} b{b}": (float(t[str(b)]["speedup"]), float(t[str(b)]["speedup_se"])) for b in self.batches})
        for path in self.dir.glob(f"probe{self._n}.*"):
            path.unlink()
        return out

    def close(self) -> None:
        """Remove the probe files."""
        shutil.rmtree(self.dir, ignore_errors=True)


class ProfileSpeedCheck:
    """Speedups a device's profile estimates at its layer batch, for every precision it timed."""

    def __init__(self, floor: float | None, profile: TargetProfile, input_size: int) -> None:
        self.floor = floor
        self.probes = {p: ProfileLatencyProbe(profile, p, profile.layer_batch, input_size) for p in sorted(profile.precisions)}
        self.batch = profile.layer_batch

    def set_reference(self, model: nn.Module) -> None:
        """Check the profile fits ``model`` and calibrate each precision's table to it."""
        for probe in self.probes.values():
            probe.set_reference(model)

    def speedups(self, model: nn.Module, rounds: int | None = None) -> dict[str, tuple[float, float]]:
        """``{"<precision> b<layer batch>": (device ms of the unpruned model / estimated ms of model, 0)}``: an estimate
        from a table, with no timing noise of its own (``rounds`` is not used)."""
        out = {}
        for prec, probe in self.probes.items():
            ref, ms = probe.measure_pair(model)
            out[f"{prec} b{self.batch}"] = (ref / ms, 0.0)
        return out

    def close(self) -> None:
        """Nothing to remove."""
