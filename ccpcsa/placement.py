"""Where models and tensors live: the one place that decides device (and floating dtype) placement.

Every entry point that runs a model — training, evaluation, statistics hooks, criteria, pruning-graph
tracing, MAC counting, checkpoint loading, ONNX export, the runners — goes through this module, so a
model handed over on another device (a checkpoint loaded on the CPU, a model left on the GPU by an
earlier stage) or in another floating dtype (``.double()``, ``.half()``) is moved to the run's device
and float32 instead of failing with ``Input type (torch.cuda.FloatTensor) and weight type
(torch.FloatTensor) should be the same``.

Models are moved *in place* (``nn.Module.to`` swaps each parameter's data, so optimizers, hooks and
pruner references to the parameters stay valid) and returned for chaining.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Floating dtype of every model the pipeline trains, evaluates and exports (AMP casts inside autocast only).
MODEL_DTYPE = torch.float32
#: x86 CPU flags of native bfloat16 arithmetic (AVX512_BF16: Cooper Lake, Zen 4 and later; AMX-BF16: Sapphire Rapids
#: and later). Without them oneDNN emulates bf16 and a bf16 step is slower than a float32 one, so AMP stays off.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; anything else → ``torch.device(device)``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine from ``/proc/cpuinfo`` (empty where it cannot be read). The one reader:
    :mod:`ccpcsa.surgery.alignment` (SIMD widths, VNNI) and :func:`amp_dtype` (bf16) ask it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def amp_dtype(device: torch.device, enabled: bool, flags: frozenset[str] | None = None) -> tuple[torch.dtype | None, str]:
    """``(autocast dtype of training on device, why)``; ``None`` means float32 throughout.

    With ``enabled`` (``train.amp``): bfloat16 on CUDA, and on a CPU whose ``flags`` (default: this machine's
    ``/proc/cpuinfo``) include one of :data:`BF16_CPU_FLAGS` — there a bf16 step runs in about half the time of a float32
    one (bench/README.md "Mixed precision on the CPU"). Weights, optimizer state, BatchNorm statistics and every
    evaluated or exported model stay float32; only the operations autocast lists run in bf16."""
    if not enabled:
        return None, "train.amp is off"
    if device.type == "cuda":
        return torch.bfloat16, "CUDA"
    if device.type != "cpu":
        return None, f"no autocast on {device.type}"
    if flags is None:
        flags = cpu_flags()
    native = sorted(flags & BF16_CPU_FLAGS)
    if native:
        return torch.bfloat16, f"CPU with {', '.join(native)}"
    return None, "this CPU has no native bf16 (avx512_bf16 or amx_bf16): float32 is faster"


def amp_label(device: torch.device, enabled: bool, flags: frozenset[str] | None = None) -> str:
    """What :func:`amp_dtype` decides, in words: ``bfloat16 autocast (why)`` or ``float32 (why)`` — the line the prune
    stage prints, ``manifest.json``'s ``train_precision`` and ``FitResult.speed["amp"]``."""
    dtype, why = amp_dtype(device, enabled, flags)
    return f"{'bfloat16 autocast' if dtype is not None else 'float32'} ({why})"


def float32_math(t: torch.Tensor) -> Any:
    """A context in which autocast is off on ``t``'s device: statistics that a forward hook computes during an AMP
    training step (sums of products, correlations) stay in float32 instead of bf16 matmuls."""
    return torch.autocast(t.device.type if t.device.type in ("cpu", "cuda") else "cpu", enabled=False)


def _normalize(device: str | torch.device) -> torch.device:
    """``cuda`` → ``cuda:<current>`` so that a bare ``cuda`` compares equal to the tensors' ``cuda:0``."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def module_device(model: nn.Module) -> torch.device:
    """Device of ``model``'s first parameter (else first buffer); ``cpu`` for a model without tensors."""
    for t in _tensors(model):
        return t.device
    return torch.device("cpu")


def module_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of ``model``'s first floating parameter or buffer; :data:`MODEL_DTYPE` when it has none."""
    for t in _tensors(model):
        if t.is_floating_point():
            return t.dtype
    return MODEL_DTYPE


def is_placed(model: nn.Module, device: str | torch.device, dtype: torch.dtype | None = MODEL_DTYPE) -> bool:
    """True when every parameter and buffer of ``model`` is on ``device`` and (unless ``dtype`` is None) every
    floating one has ``dtype``."""
    dev = _normalize(device)
    return all(t.device == dev and (dtype is None or not t.is_floating_point() or t.dtype == dtype) for t in _tensors(model))


def place(model: nn.Module, device: str | torch.device | None = None, dtype: torch.dtype | None = MODEL_DTYPE) -> nn.Module:
    """Move ``model`` in place to ``device`` (None: where its first tensor already is; ``auto`` resolves) with every
    floating parameter/buffer cast to ``dtype`` (None: keep); return it. A no-op when it is already there, so it
    is cheap to call at the top of every entry point."""
    dev = _normalize(module_device(model) if device is None else device)
    if not is_placed(model, dev, dtype):
        model.to(device=dev, dtype=dtype) if dtype is not None else model.to(dev)
    return model


def inputs_for(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on ``model``'s device, floating inputs cast to the model's floating dtype (integer inputs keep theirs).
    Returns ``x`` itself when nothing has to change; host→device copies are asynchronous."""
    dev, dtype = module_device(model), module_dtype(model)
    if x.device != dev:
        x = x.to(dev, non_blocking=True)
    if x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    return x


def example_input(model: nn.Module, input_size: int, in_channels: int = 3, batch: int = 1) -> torch.Tensor:
    """Zeros ``(batch, in_channels, input_size, input_size)`` on ``model``'s device in its floating dtype — the
    tracing input of the pruning graph, MAC counting and shape probes."""
    return torch.zeros(batch, in_channels, input_size, input_size, device=module_device(model), dtype=module_dtype(model))


def cpu_copy(model: nn.Module) -> nn.Module:
    """``model`` itself when it is already on the CPU in float32, else a float32 CPU deep copy (the original is
    left where it is) — what ONNX export and other CPU-only consumers take."""
    if is_placed(model, "cpu"):
        return model
    clone = copy.deepcopy(model)
    return place(clone, "cpu")
