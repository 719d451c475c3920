"""Channel alignment: the width multiple a target runtime runs without padding (``prune.widths.round_to: auto``).

A pruned layer is only as fast as the width its kernels really execute. Runtimes round channel counts up
to a block, so a width between two multiples of the block costs as much as the next multiple:

- **onnxruntime CPU** (x86-64): its NCHWc convolutions keep channels in blocks of one SIMD register of
  floats (MLAS ``MlasNchwcGetBlockSize``): 16 with AVX-512, 8 with AVX/AVX2; a width that is not a multiple
  pads to it and adds ``ReorderOutput`` nodes (timings in ``bench/README.md``). On other CPUs (Arm NEON,
  128-bit) we use 4.
- **TensorRT FP16 / INT8**: Tensor Core convolution kernels want input and output channels that are
  multiples of 8 for FP16 and of 16 for INT8 (NVIDIA Deep Learning Performance Guide, "Convolutional Layers
  User's Guide", section "Channels In And Out": Tensor Core requirements by data type; TF32 wants 4).

``round_to`` may also be a number, which overrides all of this.
"""

from __future__ import annotations

import platform

from ..errors import UserError
from ..placement import cpu_flags  # the one reader of /proc/cpuinfo (re-exported: export.quantize)

RUNTIMES = ("onnxruntime-cpu", "openvino-cpu", "device-profile", "tensorrt-fp16", "tensorrt-int8", "tensorrt-tf32")
#: Runtimes the pipeline measures latency on: this machine's CPU runtimes, and a profile timed on the device.
MEASURABLE = ("onnxruntime-cpu", "openvino-cpu", "device-profile")
TENSORRT_ALIGNMENT = {"tensorrt-fp16": 8, "tensorrt-int8": 16, "tensorrt-tf32": 4}


def cpu_float_lanes(flags: frozenset[str] | None = None, machine: str | None = None) -> tuple[int, str]:
    """``(floats per SIMD register, why)`` of this CPU: 16 with AVX-512F, 8 with AVX/AVX2, 4 otherwise."""
    f = cpu_flags() if flags is None else flags
    arch = machine or platform.machine()
    if "avx512f" in f:
        return 16, "AVX-512 (16 floats per register; onnxruntime's NCHWc block is 16)"
    if "avx2" in f or "avx" in f:
        return 8, "AVX/AVX2 (8 floats per register; onnxruntime's NCHWc block is 8)"
    return 4, f"no AVX on this {arch} CPU (128-bit SIMD, 4 floats per register)"


#: x86 CPU flags with which onnxruntime's INT8 kernels accumulate u8·s8 products in 32 bits (no int16 pair saturation).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"})


#: The x86 SIMD level by its float lanes (what ``round_to: auto`` follows).
_SIMD_NAMES = {16: "AVX-512", 8: "AVX2"}


def simd_label(flags: frozenset[str] | None = None) -> str:
    """The CPU's SIMD level as results name it: the float lanes of a vector register (``AVX-512`` = 16, ``AVX2`` = 8:
    what sets ``round_to: auto``), whether INT8 dot products accumulate in 32 bits (``VNNI``: avx512_vnni, avx_vnni or
    AMX; ``no VNNI``: onnxruntime's u8·s8 pairs saturate in int16) and ``AMX`` where the CPU has AMX tiles for INT8
    (onnxruntime's x86 INT8 GEMM has an AMX kernel, so INT8 speedups from such a CPU are not those of a VNNI-only one).
    ``flags``: this machine's (:func:`cpu_flags`) when omitted."""
    f = cpu_flags() if flags is None else flags
    lanes = cpu_float_lanes(f)[0]
    simd = _SIMD_NAMES.get(lanes, f"{lanes} floats per SIMD register")
    return simd + (", VNNI" if f & VNNI_FLAGS else ", no VNNI") + (", AMX" if "amx_int8" in f else "")


def resolve_alignment(round_to: int | str, runtime: str = "onnxruntime-cpu",
                      flags: frozenset[str] | None = None) -> tuple[int, str]:
    """``(alignment, why)`` for ``prune.widths.round_to`` (a number ≥ 1, or ``auto``) and ``prune.target.runtime``.

    A number for ``onnxruntime-cpu`` that is not a multiple of this CPU's float lanes (:func:`cpu_float_lanes` of
    ``flags``, this machine's when omitted) is kept, and ``why`` says what it costs there: onnxruntime's NCHWc
    convolutions and x86 INT8 kernels work in blocks of the lanes, so widths off them buy little speed (resnet20
    in 8-blocks on an AVX-512 CPU, −45 % MACs: FP32 1.06× / 1.19×, INT8 0.98× / 0.71× at batch 1 / 32,
    bench/README.md)."""
    if runtime not in RUNTIMES:
        from ..errors import unknown

        raise unknown("prune.target.runtime", runtime, RUNTIMES)
    if isinstance(round_to, str):
        if round_to != "auto":
            raise UserError(f"prune.widths.round_to must be 'auto' or an integer ≥ 1, got {round_to!r}")
        if runtime in TENSORRT_ALIGNMENT:
            a = TENSORRT_ALIGNMENT[runtime]
            return a, f"{runtime}: Tensor Core channel multiple {a} (NVIDIA DL Performance Guide, convolutional layers)"
        if runtime == "device-profile":
            raise UserError("prune.target.runtime device-profile takes its alignment from target.profile; "
                            "set target.profile to the device's target.json")
        lanes, why = cpu_float_lanes(flags)
        if runtime == "openvino-cpu":  # oneDNN's blocked layouts (nChw16c / nChw8c) follow the same SIMD width
            return lanes, "openvino-cpu on " + why.replace("onnxruntime's NCHWc block", "oneDNN's channel block")
        return lanes, f"onnxruntime-cpu on {why}"
    if isinstance(round_to, bool) or round_to < 1:
        raise UserError(f"prune.widths.round_to must be 'auto' or an integer ≥ 1, got {round_to!r}")
    why = "set by prune.widths.round_to"
    if runtime == "device-profile":
        return int(round_to), "the channel block of the staircase timed on the target (target.profile)"
    if runtime == "onnxruntime-cpu":
        lanes = cpu_float_lanes(flags)[0]
        if round_to % lanes:
            simd = _SIMD_NAMES.get(lanes, "no AVX")
            why += (f"; note: this CPU runs onnxruntime in blocks of {lanes} ({simd}), so widths in multiples of "
                    f"{round_to} may be no faster than the unpruned model (INT8 even slower); "
                    f"round_to: auto picks {lanes} here")
    return int(round_to), why
