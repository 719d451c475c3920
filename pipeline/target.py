"""The ``target`` section of the config: where the model will run (README "Target devices")."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ccpcsa.errors import UserError


@dataclass
class TargetConfig:
    """Where the model will run. ``profile``: a built-in target timed on the fly on this machine
    (``onnxruntime-cpu``, ``openvino-cpu``) or the path of a ``target.json`` that ``target_probe.py`` wrote on the
    device itself; it drives the width alignment (``prune.widths.round_to: auto``), the latency table and the timed speedup
    of latency targets (``prune.target.speedup``), and the report names it with every speed. ``precision``: which of
    the target's timings drive them (``fp32`` or ``int8``). ``runtimes``: the runtimes of this machine that ``validate``
    evaluates every ONNX artifact on and times pruned vs unpruned on, each gated alike."""

    profile: str = "onnxruntime-cpu"
    precision: str = "fp32"
    runtimes: list[str] = field(default_factory=lambda: ["onnxruntime-cpu", "openvino-cpu"])

    def validate(self) -> None:
        """Known runtimes and precision; a profile path must exist (its contents are checked where it is read)."""
        from export.runtime import CPU_RUNTIMES

        if self.precision not in ("fp32", "int8"):
            raise UserError(f"target.precision must be fp32 or int8, got {self.precision!r}")
        if not self.runtimes:
            raise UserError("target.runtimes is empty; name at least one of " + ", ".join(CPU_RUNTIMES))
        for r in self.runtimes:
            if r not in CPU_RUNTIMES:
                from ccpcsa.errors import unknown

                raise unknown("runtime in target.runtimes", r, CPU_RUNTIMES)
        if self.profile not in CPU_RUNTIMES and not Path(self.profile).expanduser().is_file():
            raise UserError(f"target.profile '{self.profile}' is neither a built-in target ({', '.join(CPU_RUNTIMES)}) "
                            "nor an existing target.json file; run target_probe.py on the device and give its output")
